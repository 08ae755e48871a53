"""Cloud Monitoring's state: the time series the emulated services write (so far: Cloud Run's
`run.googleapis.com/job/completed_execution_count`, a point for each execution that ends, with
its `result`), the project's notification channels and alert policies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud


@dataclass
class Point:
    metric: str
    labels: dict[str, str]
    resource: dict[str, str]
    value: int = 1
    time: float = field(default_factory=time.time)


class Monitoring:
    """Cloud Monitoring's backend: points, channels, policies."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.points: list[Point] = []

    def add_point(
        self, metric: str, labels: dict[str, str], resource: dict[str, str], value: int = 1
    ) -> None:
        self.points.append(Point(metric, labels, resource, value))
        self.cloud.record("event", event="monitoring.point", metric=metric, labels=labels)

    def state_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for p in self.points:
            key = p.metric + "".join(f",{k}={v}" for k, v in sorted(p.labels.items()))
            counts[key] = counts.get(key, 0) + p.value
        return {"monitoring": {"points": counts}}

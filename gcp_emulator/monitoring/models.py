"""Cloud Monitoring's state: the time series the emulated services write (so far: Cloud Run's
`run.googleapis.com/job/completed_execution_count`, a point for each execution that ends, with
its `result`), the project's notification channels and alert policies, and their evaluation
(alerting.py: incidents, notifications)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import stamp
from gcp_emulator.monitoring.alerting import Alerting, check_conditions

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud


@dataclass
class Point:
    metric: str
    labels: dict[str, str]
    resource: dict[str, str]
    value: int = 1
    time: float = field(default_factory=clock.now)
    resource_type: str = "global"


class Monitoring:
    """Cloud Monitoring's backend: points, channels, policies."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.points: list[Point] = []
        self.channels: dict[str, dict[str, Any]] = {}  # by name: the NotificationChannel
        self.policies: dict[str, dict[str, Any]] = {}  # by name: the AlertPolicy
        self.alerting = Alerting(self)

    def new_id(self) -> str:
        return str(10**18 + secrets.randbelow(9 * 10**18))

    def record_of(self) -> dict[str, str]:
        return {"mutateTime": stamp(), "mutatedBy": "operator@example.com"}

    def create_channel(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("type"):
            raise ApiError(400, "invalid", "Field notification_channel.type is required.")
        name = f"projects/{self.cloud.project}/notificationChannels/{self.new_id()}"
        channel = {
            **body,
            "name": name,
            "enabled": body.get("enabled", True),
            "creationRecord": self.record_of(),
            "mutationRecords": [self.record_of()],
        }
        self.channels[name] = channel
        return channel

    def checked_policy(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A policy's body as kept: its display name, conditions (each named) and channels
        (each existing) checked."""
        if not body.get("displayName"):
            raise ApiError(400, "invalid", "Field alert_policy.display_name is required.")
        if not body.get("conditions"):
            raise ApiError(400, "invalid", "Field alert_policy.conditions is required.")
        for channel in body.get("notificationChannels") or []:
            if channel not in self.channels:
                raise ApiError(400, "invalid", f"Notification channel {channel} does not exist.")
        check_conditions(body["conditions"])
        conditions = [
            {**c, "name": c.get("name") or f"{name}/conditions/{self.new_id()}"}
            for c in body["conditions"]
        ]
        return {**body, "name": name, "conditions": conditions}

    def create_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        name = f"projects/{self.cloud.project}/alertPolicies/{self.new_id()}"
        checked = self.checked_policy(name, body)
        policy = {
            **checked,
            "enabled": body.get("enabled", True),
            "combiner": body.get("combiner", "OR"),
            "creationRecord": self.record_of(),
            "mutationRecord": self.record_of(),
        }
        self.policies[name] = policy
        self.alerting.start()
        return policy

    def get(self, table: dict[str, dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
        found = table.get(name)
        if found is None:
            raise ApiError(404, "notFound", f"Requested entity was not found: {kind} {name}.")
        return found

    def add_point(
        self,
        metric: str,
        labels: dict[str, str],
        resource: dict[str, str],
        value: int = 1,
        resource_type: str = "global",
    ) -> None:
        self.points.append(Point(metric, labels, resource, value, resource_type=resource_type))
        self.cloud.record("event", event="monitoring.point", metric=metric, labels=labels)
        self.alerting.evaluate()  # at once: a point never waits for the next tick to alert

    async def close(self) -> None:
        await self.alerting.close()

    def state_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for p in self.points:
            key = p.metric + "".join(f",{k}={v}" for k, v in sorted(p.labels.items()))
            counts[key] = counts.get(key, 0) + p.value
        return {
            "monitoring": {
                "points": counts,
                "channels": sorted(self.channels),
                "policies": sorted(self.policies),
                **self.alerting.state_json(),
            }
        }

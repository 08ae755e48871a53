"""What a zone can start: the machine types it knows, and the stockouts a test sets
(`POST /_emulator/stockouts`), with the errors a start they refuse ends with, in Compute
Engine's words (docs/google-cloud.md, "Instances").

A start refused for capacity is an operation that ends with an error: the VM goes PROVISIONING,
then back to TERMINATED, and gcloud prints the error's code and message as YAML."""

from __future__ import annotations

import re
from dataclasses import dataclass

# machine types by name: the predefined families' shapes, and custom ones (custom-CPUS-MB)
MACHINE_TYPE = re.compile(
    r"(?:(?:e2|n1|n2|n2d|n4|c2|c2d|c3|c3d|c4|t2d|t2a|m1|m3)-"
    r"(?:micro|small|medium|standard-\d+|highmem-\d+|highcpu-\d+))"
    r"|(?:(?:e2-|n2-|n2d-)?custom-\d+-\d+)"
)
CODES = (
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "QUOTA_EXCEEDED",
)


@dataclass
class Stockout:
    """Starts in `zone` of a VM of `machine_type` ("*": any) are refused with `code`, `count`
    times (-1: every one)."""

    zone: str
    machine_type: str
    code: str
    count: int

    def refuses(self, zone: str, machine_type: str) -> bool:
        """True (and one fewer left) when this stockout refuses that start."""
        if self.count == 0 or zone != self.zone or self.machine_type not in ("*", machine_type):
            return False
        if self.count > 0:
            self.count -= 1
        return True


def refusal(code: str, project: str, zone: str, region: str) -> tuple[int, str]:
    """(httpErrorStatusCode, message) of a start refused with code."""
    where = f"projects/{project}/zones/{zone}"
    if code == "ZONE_RESOURCE_POOL_EXHAUSTED":
        return 503, (
            f"The zone '{where}' does not have enough resources available to fulfill the "
            "request.  Try a different zone, or try again later."
        )
    if code == "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS":
        return 503, (
            f"The zone '{where}' does not have enough resources available to fulfill the "
            "request.  '(resource type:compute)'."
        )
    return 403, f"Quota 'CPUS' exceeded.  Limit: 8.0 in region {region}."

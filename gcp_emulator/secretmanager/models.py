"""Secret Manager's state: secrets and their versions (docs/google-cloud.md, "Secret Manager")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import now_rfc3339
from gcp_emulator.iam.models import Policy

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud


@dataclass
class SecretVersion:
    number: int
    data: bytes
    created: str = field(default_factory=now_rfc3339)
    state: str = "ENABLED"


@dataclass
class Secret:
    name: str
    created: str = field(default_factory=now_rfc3339)
    labels: dict[str, str] = field(default_factory=dict)
    replication: dict[str, Any] = field(default_factory=lambda: {"automatic": {}})
    versions: list[SecretVersion] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)

    def add(self, data: bytes) -> SecretVersion:
        version = SecretVersion(len(self.versions) + 1, data)
        self.versions.append(version)
        return version


class SecretManager:
    """Secret Manager's backend: the project's secrets, by name."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.secrets: dict[str, Secret] = {}
        for sc in cloud.cfg.secrets:
            secret = self.secrets[sc.name] = Secret(sc.name)
            for data in sc.versions:
                secret.add(data)

    def name(self, secret: str) -> str:
        return f"projects/{self.cloud.cfg.project_number}/secrets/{secret}"

    def resource(self, secret: str) -> tuple[str, Policy | None]:
        """A secret, for IAM: its name and its policy (when it exists)."""
        found = self.secrets.get(secret)
        return self.name(secret), found.policy if found else None

    def access(self, secret: str, version: str = "latest") -> bytes:
        """A version's data (latest: the newest enabled one), or the API's 404."""
        found = self.secrets.get(secret)
        enabled = [v for v in found.versions if v.state == "ENABLED"] if found else []
        if found is None or (version == "latest" and not enabled):
            raise ApiError(
                404, "notFound", f"Secret [{self.name(secret)}] not found or has no versions."
            )
        if version == "latest":
            return enabled[-1].data
        if version.isdigit() and 1 <= int(version) <= len(found.versions):
            chosen = found.versions[int(version) - 1]
            if chosen.state != "ENABLED":
                raise ApiError(
                    400,
                    "failedPrecondition",
                    f"Secret Version [{self.name(secret)}/versions/{version}] is in "
                    f"{chosen.state} state.",
                )
            return chosen.data
        raise ApiError(
            404, "notFound", f"Secret Version [{self.name(secret)}/versions/{version}] not found."
        )

    def state_json(self) -> dict[str, Any]:
        return {"secrets": {s.name: len(s.versions) for s in self.secrets.values()}}

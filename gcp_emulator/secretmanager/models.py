"""Secret Manager's state: secrets and their versions (docs/google-cloud.md, "Secret Manager")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcp_emulator.core.util import now_rfc3339

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

    def state_json(self) -> dict[str, Any]:
        return {"secrets": {s.name: len(s.versions) for s in self.secrets.values()}}

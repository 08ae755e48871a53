"""The emulated cloud's shared state: the project, the journal of every request and event, and
one backend per service (`cloud.compute`, `cloud.secretmanager`, ...), each reaching another
only through its methods."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from gcp_emulator.compute.models import Compute
from gcp_emulator.config import EmulatorConfig
from gcp_emulator.network.namespace import PrivateNetwork
from gcp_emulator.secretmanager.models import SecretManager

ACCESS_TOKEN = "emulator-token"  # noqa: S105 (not a secret: the emulator takes any token)


class Cloud:
    def __init__(
        self,
        cfg: EmulatorConfig,
        state_root: Path,
        base_url: str,
        bin_dir: Path,
        net: PrivateNetwork | None = None,
    ) -> None:
        self.cfg = cfg
        self.net = net  # the private network what it starts runs in, or None
        self.project = cfg.project
        self.state_root = state_root
        self.base_url = base_url
        self.bin_dir = bin_dir
        self.journal: list[dict[str, Any]] = []
        self._seq = itertools.count(1)
        self.compute = Compute(self)
        self.secretmanager = SecretManager(self)

    def record(self, kind: str, **fields: Any) -> None:
        self.journal.append({"seq": next(self._seq), "time": time.time(), "kind": kind, **fields})

    def gcloud_env(self, config_dir: Path) -> dict[str, str]:
        """What points the real gcloud at this emulator."""
        return {
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": f"{self.base_url}/compute/v1/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER": f"{self.base_url}/",
            "CLOUDSDK_AUTH_ACCESS_TOKEN": ACCESS_TOKEN,
            "CLOUDSDK_CORE_PROJECT": self.project,
            "CLOUDSDK_CONFIG": str(config_dir),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        }

    def command(self, argv: list[str]) -> list[str]:
        """argv as a guest or a task is started: inside the private network, if there is one."""
        return self.net.command(argv) if self.net is not None else argv

    def boot_configured(self) -> None:
        """At start-up: what the configuration declares running starts now."""
        self.compute.boot_configured()

    async def close(self) -> None:
        """Stop every guest (the emulator is exiting)."""
        await self.compute.close()

    def kill_all_now(self) -> None:
        self.compute.kill_all_now()

    def state_json(self) -> dict[str, Any]:
        """Everything tests assert on, in one document."""
        return {**self.compute.state_json(), **self.secretmanager.state_json()}

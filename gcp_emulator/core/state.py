"""The emulated cloud's shared state: the project, the journal of every request and event, and
one backend per service (`cloud.compute`, `cloud.secretmanager`, ...), each reaching another
only through its methods."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from gcp_emulator.artifactregistry.models import ArtifactRegistry
from gcp_emulator.cloudbuild.models import CloudBuild
from gcp_emulator.compute.models import Compute
from gcp_emulator.config import EmulatorConfig
from gcp_emulator.core import clock
from gcp_emulator.iam.models import Iam
from gcp_emulator.logging.models import Logging
from gcp_emulator.monitoring.models import Monitoring
from gcp_emulator.network.namespace import PrivateNetwork
from gcp_emulator.run.models import Run
from gcp_emulator.scheduler.models import Scheduler
from gcp_emulator.secretmanager.models import SecretManager
from gcp_emulator.serviceusage.models import ServiceUsage
from gcp_emulator.storage.models import Storage

ACCESS_TOKEN = "emulator-token"  # noqa: S105 (not a secret: the operator's, any token will do)
# the services whose endpoint override carries a prefix of their name (core/routing.py)
PREFIXED = (
    "iam", "cloudresourcemanager", "serviceusage", "run", "cloudscheduler", "cloudbuild",
    "artifactregistry", "monitoring", "logging",
)  # fmt: skip


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
        self.iam = Iam(self)
        self.serviceusage = ServiceUsage(self)
        self.compute = Compute(self)
        self.secretmanager = SecretManager(self)
        self.storage = Storage(self)
        self.images = ArtifactRegistry(self)
        self.builds = CloudBuild(self)
        self.logging = Logging(self)
        self.monitoring = Monitoring(self)
        self.run = Run(self)
        self.scheduler = Scheduler(self)
        self.app: Any = None  # the HTTP front (core/app.py): what Cloud Scheduler calls

    def record(self, kind: str, **fields: Any) -> None:
        self.journal.append({"seq": next(self._seq), "time": clock.now(), "kind": kind, **fields})

    def gcloud_env(self, config_dir: Path) -> dict[str, str]:
        """What points the real gcloud at this emulator, with endpoint overrides (in its private
        network gcloud needs none). gcloud run puts the region before the override's host: its
        regional calls resolve only where the private network maps that name."""
        overrides = {
            f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{name.upper()}": f"{self.base_url}/{name}/"
            for name in PREFIXED
        }
        return {
            **overrides,
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{self.base_url}/storage/storage/v1/",
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
        """Stop every guest and task (the emulator is exiting)."""
        await self.scheduler.close()
        await self.builds.close()
        await self.run.close()
        await self.compute.close()
        await self.monitoring.close()

    def kill_all_now(self) -> None:
        self.compute.kill_all_now()

    def state_json(self) -> dict[str, Any]:
        """Everything tests assert on, in one document."""
        out: dict[str, Any] = {}
        for backend in (
            self.compute, self.secretmanager, self.iam, self.serviceusage, self.storage,
            self.images, self.builds, self.run, self.scheduler, self.logging, self.monitoring,
        ):  # fmt: skip
            out.update(backend.state_json())
        return out

"""Service Usage's state: which of the project's APIs are enabled, and the error a call to one
that is not gets (docs/google-cloud.md, "Service Usage").

Without `services` in the configuration every API is enabled (the emulator as it always was);
with it (a new project: `services = []`), an API is enabled by `gcloud services enable`, and a
call to any other answers 403 PERMISSION_DENIED with an ErrorInfo of reason SERVICE_DISABLED, as
Google's front end does, whatever the API (Compute's in its own shape)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from gcp_emulator.core.errors import ApiError

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud

# the APIs the emulator answers, by the route's service, and their titles
SERVICES = {
    "compute": ("compute.googleapis.com", "Compute Engine API"),
    "secretmanager": ("secretmanager.googleapis.com", "Secret Manager API"),
    "run": ("run.googleapis.com", "Cloud Run Admin API"),
    "cloudscheduler": ("cloudscheduler.googleapis.com", "Cloud Scheduler API"),
    "iam": ("iam.googleapis.com", "Identity and Access Management (IAM) API"),
    "cloudbuild": ("cloudbuild.googleapis.com", "Cloud Build API"),
    "artifactregistry": ("artifactregistry.googleapis.com", "Artifact Registry API"),
    "monitoring": ("monitoring.googleapis.com", "Cloud Monitoring API"),
    "logging": ("logging.googleapis.com", "Cloud Logging API"),
    "storage": ("storage.googleapis.com", "Cloud Storage API"),
}
# enabled in every project, and not to be disabled (Service Usage and Resource Manager themselves)
ALWAYS = ("serviceusage.googleapis.com", "cloudresourcemanager.googleapis.com")
TITLES = {name: title for name, title in SERVICES.values()} | {
    "serviceusage.googleapis.com": "Service Usage API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
}


class ServiceUsage:
    """Service Usage's backend: the enabled services (None: all of them)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        configured = cloud.cfg.services
        self.enabled: set[str] | None = None if configured is None else set(configured)
        self.operations: dict[str, dict[str, Any]] = {}

    def is_enabled(self, service: str) -> bool:
        return service in ALWAYS or self.enabled is None or service in self.enabled

    def require(self, route_service: str) -> None:
        """A call of a route of route_service: 403 SERVICE_DISABLED unless its API is on."""
        api = SERVICES.get(route_service)
        if api is None or self.is_enabled(api[0]):
            return
        name, title = api
        number = self.cloud.cfg.project_number
        url = f"https://console.developers.google.com/apis/api/{name}/overview?project={number}"
        raise ApiError(
            403,
            "accessNotConfigured",
            f"{title} has not been used in project {number} before or it is disabled. Enable it "
            f"by visiting {url} then retry. If you enabled this API recently, wait a few "
            "minutes for the action to propagate to our systems and retry.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "SERVICE_DISABLED",
                    "domain": "googleapis.com",
                    "metadata": {
                        "service": name,
                        "consumer": f"projects/{number}",
                        "serviceTitle": title,
                        "containerInfo": str(number),
                        "activationUrl": url,
                    },
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {"description": "Google developers console API activation", "url": url}
                    ],
                },
            ],
        )

    def service_json(self, name: str) -> dict[str, Any]:
        number = self.cloud.cfg.project_number
        return {
            "name": f"projects/{number}/services/{name}",
            "config": {"name": name, "title": TITLES.get(name, name)},
            "state": "ENABLED" if self.is_enabled(name) else "DISABLED",
            "parent": f"projects/{number}",
        }

    def known(self, name: str) -> None:
        if name not in TITLES and not name.endswith(".googleapis.com"):
            raise ApiError(400, "invalid", f"Invalid service name {name!r}.")

    def enable(self, names: list[str]) -> dict[str, Any]:
        """Enable them; the operation (already done: the emulator's are instant)."""
        for name in names:
            self.known(name)
        if self.enabled is not None:
            self.enabled.update(names)
        self.cloud.record("event", event="services.enable", services=sorted(names))
        return self.operation(
            "BatchEnableServicesResponse", {"services": [self.service_json(n) for n in names]}
        )

    def disable(self, name: str) -> dict[str, Any]:
        self.known(name)
        if name in ALWAYS:
            raise ApiError(400, "failedPrecondition", f"The service {name} cannot be disabled.")
        if self.enabled is None:
            self.enabled = set(n for n, _ in SERVICES.values())
        self.enabled.discard(name)
        return self.operation("DisableServiceResponse", {"service": self.service_json(name)})

    def operation(self, kind: str, response: dict[str, Any]) -> dict[str, Any]:
        name = f"operations/acat.p2-{self.cloud.cfg.project_number}-{secrets.token_hex(8)}"
        op = {
            "name": name,
            "done": True,
            "response": {
                "@type": f"type.googleapis.com/google.api.serviceusage.v1.{kind}",
                **response,
            },
        }
        self.operations[name] = op
        return op

    def state_json(self) -> dict[str, Any]:
        return {"services": None if self.enabled is None else sorted(self.enabled)}

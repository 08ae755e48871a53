"""How a request finds its handler: each service registers its routes here (`@route`), by the
API it belongs to, its method and its path; `match` picks the one a request names.

A request names its service by its host (`compute.googleapis.com`, `asia-northeast3-run.googleapis
.com`: the emulator's private network answers Google's own names), by a path prefix of the
service's name (`/cloudscheduler/v1/...`: what an endpoint override of gcloud points at), or, for
the services the emulator first answered at its root (Compute under `/compute/v1/`, Secret Manager
and the metadata server), by its path alone."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from gcp_emulator.core.errors import ApiError

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud

Handler = Callable[["Cloud", Request, dict[str, str]], Awaitable[Response]]
# the resource a call is about, for IAM: its name and its own IAM policy (None: none of its own)
Resource = Callable[["Cloud", dict[str, str]], tuple[str, Any]]


@dataclass
class RouteDef:
    service: str
    method: str
    pattern: re.Pattern[str]
    api: str
    handler: Handler
    permission: str | None = None  # what a service account needs for it (iam/models.py)
    resource: Resource | None = None


ROUTES: list[RouteDef] = []
# Google's host names, and the service each is (a regional Cloud Run host: REGION-run...)
HOSTS = {
    "compute.googleapis.com": "compute",
    "secretmanager.googleapis.com": "secretmanager",
    "run.googleapis.com": "run",
    "cloudscheduler.googleapis.com": "cloudscheduler",
    "iam.googleapis.com": "iam",
    "cloudresourcemanager.googleapis.com": "cloudresourcemanager",
    "serviceusage.googleapis.com": "serviceusage",
    "cloudbuild.googleapis.com": "cloudbuild",
    "storage.googleapis.com": "storage",
    "artifactregistry.googleapis.com": "artifactregistry",
    "monitoring.googleapis.com": "monitoring",
    "logging.googleapis.com": "logging",
}
# the metadata server's names answer as the root does: what Google's answers there, and Secret
# Manager's `/v1/...` too, because the QEMU guest's gcloud reaches Secret Manager through the
# metadata address, the only way out of the VM to the emulator (gcp_emulator/metadata/relay.py)
METADATA_HOSTS = ("metadata.google.internal", "169.254.169.254")
REGIONAL_RUN = re.compile(r"[a-z]+-[a-z]+\d+-(run\.googleapis\.com|[0-9.]+|localhost)")
ROOT_SERVICES = ("compute", "secretmanager", "metadata")  # answered at the root as well


def route(
    service: str,
    method: str,
    path: str,
    api: str,
    permission: str | None = None,
    resource: Resource | None = None,
) -> Callable[[Handler], Handler]:
    """Register a handler of `service` for METHOD PATH (`{name}` segments are its parameters;
    `{rest}` takes the rest of the path), named `api` in the journal and for faults; a service
    account's call needs `permission` on `resource` (the project's, when none is given)."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/:]+)", path)
    regex = regex.replace("(?P<rest>[^/:]+)", "(?P<rest>.*)")

    def register(fn: Handler) -> Handler:
        compiled = re.compile(f"^{regex}$")
        ROUTES.append(RouteDef(service, method, compiled, api, fn, permission, resource))
        return fn

    return register


def service_route(service: str) -> Callable[..., Callable[[Handler], Handler]]:
    """`route` with its service given: each service's responses.py registers with one."""

    def bound(
        method: str,
        path: str,
        api: str,
        permission: str | None = None,
        resource: Resource | None = None,
    ) -> Callable[[Handler], Handler]:
        return route(service, method, path, api, permission, resource)

    return bound


def service_of(host: str, path: str) -> tuple[str | None, str]:
    """(the service the request names by its host or path prefix, or None; the path within it)."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    if name in METADATA_HOSTS:
        return None, path
    if name in HOSTS:
        return HOSTS[name], path
    if REGIONAL_RUN.fullmatch(name):
        return "run", path.removeprefix("/run")
    first = path.split("/", 2)[1] if path.count("/") >= 1 else ""
    if first in set(HOSTS.values()) and first not in ROOT_SERVICES:
        return first, path[len(first) + 1 :]
    return None, path


def match(method: str, host: str, path: str) -> tuple[RouteDef, dict[str, str]] | None:
    """The route a request names, with its path's parameters."""
    service, inner = service_of(host, path)
    for r in ROUTES:
        if r.method != method:
            continue
        if service is not None and r.service != service:
            continue
        if service is None and r.service not in ROOT_SERVICES:
            continue
        hit = r.pattern.match(inner)
        if hit:
            return r, hit.groupdict()
    return None


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, "parseError", "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "parseError", "Invalid JSON payload received.")
    return body

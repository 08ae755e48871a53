"""Cloud Monitoring v3's HTTP surface for alerting, as gcloud 528's `beta monitoring channels`
and `alpha monitoring policies` call it (neither is in the GA track): notification channels
(create, get, list with `type="X"` filtered on the server as gcloud expects, patch, delete) and
alert policies (create, get, list, patch, delete). The policies are evaluated, and the channels
told, by monitoring/alerting.py."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud

route = service_route("monitoring")
P = "/v3/projects/{project}"


def project_of(cloud: Cloud, m: dict[str, str]) -> str:
    if m["project"] not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", f"Permission denied on resource project {m['project']}.")
    return f"projects/{cloud.project}"


def camel(field: str) -> str:
    """A protobuf field name in JSON's spelling: notification_channels -> notificationChannels."""
    head, *rest = field.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def patched(current: dict[str, Any], patch: dict[str, Any], mask: str) -> dict[str, Any]:
    """current with the top-level fields the mask names replaced; without a mask, the whole
    resource is the patch's (its name and creation record kept)."""
    # a mask names protobuf fields, as gcloud sends them (notification_channels), or JSON's
    fields = [camel(f.strip().split(".")[0]) for f in mask.split(",") if f.strip()]
    if not fields:
        kept = {k: current[k] for k in ("name", "creationRecord") if k in current}
        return {**patch, **kept}
    out = dict(current)
    for f in fields:
        if f in ("name", "creationRecord"):
            continue
        if f in patch:
            out[f] = patch[f]
        else:
            out.pop(f, None)
    return out


@route(
    "POST",
    P + "/notificationChannels",
    "monitoring.projects.notificationChannels.create",
    "monitoring.notificationChannels.create",
)
async def channels_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    project_of(cloud, m)
    return JSONResponse(cloud.monitoring.create_channel(await json_body(request)))


@route(
    "GET",
    P + "/notificationChannels",
    "monitoring.projects.notificationChannels.list",
    "monitoring.notificationChannels.list",
)
async def channels_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    project_of(cloud, m)
    wanted = re.search(r'type\s*=\s*"([^"]+)"', request.query_params.get("filter", ""))
    items = [
        c
        for _, c in sorted(cloud.monitoring.channels.items())
        if wanted is None or c.get("type") == wanted[1]
    ]
    return JSONResponse({"notificationChannels": items, "totalSize": len(items)} if items else {})


@route(
    "GET",
    P + "/notificationChannels/{channel}",
    "monitoring.projects.notificationChannels.get",
    "monitoring.notificationChannels.get",
)
async def channels_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{project_of(cloud, m)}/notificationChannels/{m['channel']}"
    return JSONResponse(cloud.monitoring.get(cloud.monitoring.channels, name, "channel"))


@route(
    "PATCH",
    P + "/notificationChannels/{channel}",
    "monitoring.projects.notificationChannels.patch",
    "monitoring.notificationChannels.update",
)
async def channels_patch(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{project_of(cloud, m)}/notificationChannels/{m['channel']}"
    current = cloud.monitoring.get(cloud.monitoring.channels, name, "channel")
    body = patched(current, await json_body(request), request.query_params.get("updateMask", ""))
    cloud.monitoring.channels[name] = body
    return JSONResponse(body)


@route(
    "DELETE",
    P + "/notificationChannels/{channel}",
    "monitoring.projects.notificationChannels.delete",
    "monitoring.notificationChannels.delete",
)
async def channels_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{project_of(cloud, m)}/notificationChannels/{m['channel']}"
    cloud.monitoring.get(cloud.monitoring.channels, name, "channel")
    users = [p["name"] for p in cloud.monitoring.policies.values()
             if name in (p.get("notificationChannels") or [])]  # fmt: skip
    if users and request.query_params.get("force", "").lower() != "true":
        raise ApiError(
            400,
            "failedPrecondition",
            f"Notification channel {name} is referenced by alert policies {users}; "
            "delete with force to remove it anyway.",
        )
    del cloud.monitoring.channels[name]
    return JSONResponse({})


@route(
    "POST",
    P + "/alertPolicies",
    "monitoring.projects.alertPolicies.create",
    "monitoring.alertPolicies.create",
)
async def policies_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    project_of(cloud, m)
    return JSONResponse(cloud.monitoring.create_policy(await json_body(request)))


@route(
    "GET",
    P + "/alertPolicies",
    "monitoring.projects.alertPolicies.list",
    "monitoring.alertPolicies.list",
)
async def policies_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    project_of(cloud, m)
    items = [p for _, p in sorted(cloud.monitoring.policies.items())]
    return JSONResponse({"alertPolicies": items, "totalSize": len(items)} if items else {})


@route(
    "GET",
    P + "/alertPolicies/{policy}",
    "monitoring.projects.alertPolicies.get",
    "monitoring.alertPolicies.get",
)
async def policies_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{project_of(cloud, m)}/alertPolicies/{m['policy']}"
    return JSONResponse(cloud.monitoring.get(cloud.monitoring.policies, name, "policy"))


@route(
    "PATCH",
    P + "/alertPolicies/{policy}",
    "monitoring.projects.alertPolicies.patch",
    "monitoring.alertPolicies.update",
)
async def policies_patch(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{project_of(cloud, m)}/alertPolicies/{m['policy']}"
    current = cloud.monitoring.get(cloud.monitoring.policies, name, "policy")
    body = patched(current, await json_body(request), request.query_params.get("updateMask", ""))
    body = cloud.monitoring.checked_policy(name, body)
    body["mutationRecord"] = cloud.monitoring.record_of()
    cloud.monitoring.policies[name] = body
    return JSONResponse(body)


@route(
    "DELETE",
    P + "/alertPolicies/{policy}",
    "monitoring.projects.alertPolicies.delete",
    "monitoring.alertPolicies.delete",
)
async def policies_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{project_of(cloud, m)}/alertPolicies/{m['policy']}"
    cloud.monitoring.get(cloud.monitoring.policies, name, "policy")
    del cloud.monitoring.policies[name]
    return JSONResponse({})

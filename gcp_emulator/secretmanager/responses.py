"""Secret Manager v1's HTTP surface: secrets and versions, each request into the backend's state
(secretmanager/models.py) and its answer in the API's shape."""

from __future__ import annotations

import base64
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.crc32c import crc32c
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud
from gcp_emulator.core.util import decode_bytes
from gcp_emulator.secretmanager.models import Secret

route = service_route("secretmanager")


S = "/v1/projects/{project}/secrets"


def _secret(cloud: Cloud, m: dict[str, str]) -> Secret:
    secret = (
        cloud.secretmanager.secrets.get(m["secret"])
        if m["project"] in (cloud.project, str(cloud.cfg.project_number))
        else None
    )
    if secret is None:
        raise ApiError(404, "notFound", f"Secret [{_secret_name(cloud, m['secret'])}] not found.")
    return secret


def _secret_name(cloud: Cloud, name: str) -> str:
    return f"projects/{cloud.cfg.project_number}/secrets/{name}"


def _secret_json(cloud: Cloud, secret: Secret) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": _secret_name(cloud, secret.name),
        "replication": secret.replication,
        "createTime": secret.created,
        "etag": f'"{len(secret.versions)}"',
    }
    if secret.labels:
        body["labels"] = secret.labels
    return body


def _version_json(cloud: Cloud, secret: Secret, number: int) -> dict[str, Any]:
    v = secret.versions[number - 1]
    return {
        "name": f"{_secret_name(cloud, secret.name)}/versions/{v.number}",
        "createTime": v.created,
        "state": v.state,
        "etag": f'"{v.number}"',
        "replicationStatus": {"automatic": {}},
        "clientSpecifiedPayloadChecksum": True,
    }


def _version(cloud: Cloud, m: dict[str, str]) -> tuple[Secret, int]:
    try:
        secret = _secret(cloud, m)
    except ApiError:
        if m["version"] == "latest":
            raise ApiError(
                404,
                "notFound",
                f"Secret [{_secret_name(cloud, m['secret'])}] not found or has no versions.",
            ) from None
        raise
    wanted = m["version"]
    enabled = [v.number for v in secret.versions if v.state == "ENABLED"]
    if wanted == "latest" and enabled:
        return secret, enabled[-1]
    if wanted.isdigit() and 1 <= int(wanted) <= len(secret.versions):
        return secret, int(wanted)
    raise ApiError(
        404,
        "notFound",
        f"Secret Version [{_secret_name(cloud, secret.name)}/versions/{wanted}] not found.",
    )


def secret_resource(cloud: Cloud, m: dict[str, str]) -> tuple[str, Any]:
    return cloud.secretmanager.resource(m["secret"])


@route(
    "GET",
    S + "/{secret}/versions/{version}:access",
    "secretmanager.versions.access",
    "secretmanager.versions.access",
    secret_resource,
)
async def versions_access(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret, number = _version(cloud, m)
    version = secret.versions[number - 1]
    if version.state != "ENABLED":
        raise ApiError(
            400,
            "failedPrecondition",
            f"Secret Version [{_secret_name(cloud, secret.name)}/versions/{number}] is in "
            f"{version.state} state.",
        )
    data = version.data
    return JSONResponse(
        {
            "name": f"{_secret_name(cloud, secret.name)}/versions/{number}",
            "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc32c(data))},
        }
    )


@route(
    "GET",
    S + "/{secret}:getIamPolicy",
    "secretmanager.secrets.getIamPolicy",
    "secretmanager.secrets.getIamPolicy",
    secret_resource,
)
async def secrets_get_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(_secret(cloud, m).policy.json())


@route(
    "POST",
    S + "/{secret}:setIamPolicy",
    "secretmanager.secrets.setIamPolicy",
    "secretmanager.secrets.setIamPolicy",
    secret_resource,
)
async def secrets_set_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret = _secret(cloud, m)
    body = await json_body(request)
    return JSONResponse(secret.policy.set(body.get("policy") or {}).json())


@route("GET", S + "/{secret}/versions/{version}", "secretmanager.versions.get")
async def versions_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret, number = _version(cloud, m)
    return JSONResponse(_version_json(cloud, secret, number))


@route("GET", S + "/{secret}/versions", "secretmanager.versions.list")
async def versions_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret = _secret(cloud, m)
    versions = [_version_json(cloud, secret, v.number) for v in reversed(secret.versions)]
    return JSONResponse({"versions": versions, "totalSize": len(versions)})


async def _set_state(cloud: Cloud, m: dict[str, str], state: str) -> Response:
    """versions.disable / versions.enable: the version's state; the version as the answer."""
    secret, number = _version(cloud, m)
    secret.versions[number - 1].state = state
    return JSONResponse(_version_json(cloud, secret, number))


@route("POST", S + "/{secret}/versions/{version}:disable", "secretmanager.versions.disable")
async def versions_disable(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return await _set_state(cloud, m, "DISABLED")


@route("POST", S + "/{secret}/versions/{version}:enable", "secretmanager.versions.enable")
async def versions_enable(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return await _set_state(cloud, m, "ENABLED")


@route("POST", S + "/{secret}:addVersion", "secretmanager.secrets.addVersion")
async def add_version(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret = _secret(cloud, m)
    payload = (await json_body(request)).get("payload") or {}
    try:
        data = decode_bytes(payload.get("data", ""))
    except (ValueError, TypeError, AttributeError):
        raise ApiError(400, "invalid", "Invalid value at 'payload.data' (TYPE_BYTES).") from None
    claimed = payload.get("dataCrc32c")
    if claimed is not None and int(claimed) != crc32c(data):
        raise ApiError(
            400, "invalid", "Checksum mismatch: the payload's data_crc32c does not match the data."
        )
    version = secret.add(data)
    return JSONResponse(_version_json(cloud, secret, version.number))


@route("POST", S, "secretmanager.secrets.create")
async def secrets_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = request.query_params.get("secretId", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name):
        raise ApiError(400, "invalid", f"Invalid secret id: {name!r}.")
    if m["project"] not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", f"Permission denied on project {m['project']}.")
    if name in cloud.secretmanager.secrets:
        raise ApiError(
            409, "alreadyExists", f"Secret [{_secret_name(cloud, name)}] already exists."
        )
    body = await json_body(request)
    secret = Secret(
        name,
        labels=body.get("labels") or {},
        replication=body.get("replication") or {"automatic": {}},
    )
    cloud.secretmanager.secrets[name] = secret
    return JSONResponse(_secret_json(cloud, secret))


@route("GET", S + "/{secret}", "secretmanager.secrets.get")
async def secrets_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(_secret_json(cloud, _secret(cloud, m)))


@route("DELETE", S + "/{secret}", "secretmanager.secrets.delete")
async def secrets_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    cloud.secretmanager.secrets.pop(_secret(cloud, m).name)
    return JSONResponse({})


@route("GET", S, "secretmanager.secrets.list")
async def secrets_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    items = [_secret_json(cloud, s) for s in cloud.secretmanager.secrets.values()]
    return JSONResponse({"secrets": items, "totalSize": len(items)})

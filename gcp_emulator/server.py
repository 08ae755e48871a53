"""The emulator's HTTP front: Compute Engine v1, Secret Manager v1, the metadata server, and
the test hooks under /_emulator/, on one loopback port.

Each API call has a name (`compute.instances.start`, `secretmanager.versions.access`, ...)
used by the journal and by fault injection. Errors take the shape of the API they imitate:
Compute's `{"error": {"code", "message", "errors": [{"reason", ...}]}}`, Secret Manager's
`{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gcp_emulator import iam
from gcp_emulator import metadata as metadata_tree
from gcp_emulator.capacity import CODES as CAPACITY_CODES
from gcp_emulator.capacity import Stockout
from gcp_emulator.cloud import (
    ApiError,
    Cloud,
    Instance,
    Secret,
    decode_bytes,
    fingerprint,
    now_rfc3339,
)
from gcp_emulator.crc32c import crc32c

logger = logging.getLogger(__name__)

RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
FAULT_REASON = {429: "rateLimitExceeded", 403: "forbidden", 404: "notFound", 400: "badRequest"}

Handler = Callable[[Cloud, Request, dict[str, str]], Awaitable[Response]]


@dataclass
class Fault:
    status: int | None
    count: int  # how many calls it still affects; -1: every call
    delay: float
    message: str


@dataclass
class RouteDef:
    method: str
    pattern: re.Pattern[str]
    api: str
    handler: Handler


ROUTES: list[RouteDef] = []


def route(method: str, path: str, api: str) -> Callable[[Handler], Handler]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/:]+)", path)
    regex = regex.replace("(?P<rest>[^/:]+)", "(?P<rest>.*)")

    def register(fn: Handler) -> Handler:
        ROUTES.append(RouteDef(method, re.compile(f"^{regex}$"), api, fn))
        return fn

    return register


def api_family(api: str) -> str:
    return api.split(".", 1)[0]


def error_response(api: str, err: ApiError) -> Response:
    if api_family(api) == "secretmanager" or err.code == 401:
        body = {
            "code": err.code,
            "message": err.message,
            "status": RPC_STATUS.get(err.code, "UNKNOWN"),
        }
    else:
        body = {
            "code": err.code,
            "message": err.message,
            "errors": [{"message": err.message, "domain": "global", "reason": err.reason}],
        }
    return JSONResponse({"error": body}, status_code=err.code)


def fault_error(status: int, message: str) -> ApiError:
    if not message:
        message = (
            "Rate Limit Exceeded"
            if status == 429
            else "Internal error. Please try again."
            if status >= 500
            else f"Injected error {status}"
        )
    reason = FAULT_REASON.get(status, "backendError")
    return ApiError(status, reason, message)


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


# -- Compute Engine --------------------------------------------------------------------------

C = "/compute/v1/projects/{project}"


def _inst(cloud: Cloud, m: dict[str, str]) -> Instance:
    return cloud.instance(m["project"], m["zone"], m["instance"])


def _op(cloud: Cloud, op: Any) -> Response:
    return JSONResponse(cloud.operation_json(op))


@route("GET", C + "/zones/{zone}/instances/{instance}", "compute.instances.get")
async def instances_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.instance_json(_inst(cloud, m)))


@route("GET", C + "/zones/{zone}/instances", "compute.instances.list")
async def instances_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    items = [
        cloud.instance_json(i)
        for (z, _n), i in sorted(cloud.instances.items())
        if z == m["zone"] and m["project"] == cloud.project
    ]
    return JSONResponse(
        {
            "kind": "compute#instanceList",
            "items": items,
            "selfLink": cloud.link(f"projects/{cloud.project}/zones/{m['zone']}/instances"),
        }
    )


@route("POST", C + "/zones/{zone}/instances/{instance}/start", "compute.instances.start")
async def instances_start(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.start(_inst(cloud, m)))


@route("POST", C + "/zones/{zone}/instances/{instance}/stop", "compute.instances.stop")
async def instances_stop(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.stop(_inst(cloud, m)))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/addAccessConfig",
    "compute.instances.addAccessConfig",
)
async def add_access_config(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    body = await json_body(request)
    nic = request.query_params.get("networkInterface", "")
    return _op(cloud, cloud.add_access_config(inst, nic, body))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/deleteAccessConfig",
    "compute.instances.deleteAccessConfig",
)
async def delete_access_config(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    q = request.query_params  # form-decoded: "External+NAT" arrives as "External NAT"
    return _op(
        cloud,
        cloud.delete_access_config(inst, q.get("networkInterface", ""), q.get("accessConfig", "")),
    )


@route(
    "POST", C + "/zones/{zone}/instances/{instance}/setMetadata", "compute.instances.setMetadata"
)
async def set_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.set_metadata(inst, await json_body(request)))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/setMachineType",
    "compute.instances.setMachineType",
)
async def set_machine_type(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.set_machine_type(inst, await json_body(request)))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/setScheduling",
    "compute.instances.setScheduling",
)
async def set_scheduling(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.set_scheduling(inst, await json_body(request)))


@route("POST", C + "/zones/{zone}/instances/{instance}/setLabels", "compute.instances.setLabels")
async def set_labels(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.set_labels(inst, await json_body(request)))


CONSOLE_SERVED = ("RUNNING", "STOPPING", "REPAIRING")  # the guest runs: its console is read


@route(
    "GET",
    C + "/zones/{zone}/instances/{instance}/serialPort",
    "compute.instances.getSerialPortOutput",
)
async def serial_port(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    if inst.status not in CONSOLE_SERVED:
        # documented: the output is available while the VM runs (the error is assumed)
        raise ApiError(400, "resourceNotReady", f"The resource '{inst.path}' is not ready")
    port = request.query_params.get("port", "1")
    if port != "1":
        raise ApiError(400, "invalid", f"Invalid value for field 'port': '{port}'.")
    try:
        start = int(request.query_params.get("start", "0"))
    except ValueError:
        raise ApiError(400, "invalid", "Invalid value for field 'start'.") from None
    contents, start, nxt = inst.serial.read(start)
    return JSONResponse(
        {
            "kind": "compute#serialPortOutput",
            "contents": contents,
            "start": str(start),
            "next": str(nxt),
            "selfLink": cloud.link(inst.path) + "/serialPort",
        }
    )


GUEST_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-]+")
QUERY_PATH = re.compile(r"([A-Za-z0-9_-]+/[A-Za-z0-9_-]*)?")
MAX_GUEST_ATTRIBUTE_BYTES = 100 * 1024  # the documented limit per value


def guest_attribute_not_found(path: str) -> ApiError:
    return ApiError(
        404, "notFound", f"The resource '{path}' of type 'Guest Attribute' was not found."
    )


@route(
    "GET",
    C + "/zones/{zone}/instances/{instance}/getGuestAttributes",
    "compute.instances.getGuestAttributes",
)
async def get_guest_attributes(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    """`queryPath` ("", "NS/" or "NS/KEY") answers queryValue.items; `variableKey` ("NS/KEY")
    answers variableValue (docs/google-cloud.md, "Guest attributes and the metadata server")."""
    inst = _inst(cloud, m)
    body: dict[str, Any] = {
        "kind": "compute#guestAttributes",
        "selfLink": cloud.link(inst.path) + "/getGuestAttributes",
    }
    variable = request.query_params.get("variableKey")
    if variable is not None:
        if variable not in inst.guest_attributes:
            raise guest_attribute_not_found(variable)
        return JSONResponse(
            {**body, "variableKey": variable, "variableValue": inst.guest_attributes[variable]}
        )
    query = request.query_params.get("queryPath", "")
    if not QUERY_PATH.fullmatch(query):
        raise ApiError(400, "invalid", f"Invalid value for field 'queryPath': '{query}'.")
    items = [
        {"namespace": path.split("/", 1)[0], "key": path.split("/", 1)[1], "value": value}
        for path, value in sorted(inst.guest_attributes.items())
        if path == query or (query.endswith("/") and path.startswith(query)) or not query
    ]
    if not items:
        raise guest_attribute_not_found(query)
    return JSONResponse({**body, "queryPath": query, "queryValue": {"items": items}})


@route("GET", C + "/regions/{region}/addresses/{address}", "compute.addresses.get")
async def addresses_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.address_json(cloud.address(m["project"], m["region"], m["address"])))


@route("GET", C + "/regions/{region}/addresses", "compute.addresses.list")
async def addresses_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    items = [
        cloud.address_json(a)
        for (r, _n), a in sorted(cloud.addresses.items())
        if r == m["region"] and m["project"] == cloud.project
    ]
    return JSONResponse({"kind": "compute#addressList", "items": items})


@route("GET", C + "/zones/{zone}/operations/{operation}", "compute.zoneOperations.get")
async def operations_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.operation(m["project"], m["zone"], m["operation"]))


@route("POST", C + "/zones/{zone}/operations/{operation}/wait", "compute.zoneOperations.wait")
async def operations_wait(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    op = cloud.operation(m["project"], m["zone"], m["operation"])
    # Like the real wait: after the cap, answer with the operation as it is, not DONE yet.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(op.done.wait(), cloud.cfg.operation_wait_cap)
    return _op(cloud, op)


# -- Secret Manager --------------------------------------------------------------------------

S = "/v1/projects/{project}/secrets"


def _secret(cloud: Cloud, m: dict[str, str]) -> Secret:
    secret = (
        cloud.secrets.get(m["secret"])
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


@route("GET", S + "/{secret}/versions/{version}:access", "secretmanager.versions.access")
async def versions_access(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret, number = _version(cloud, m)
    data = secret.versions[number - 1].data
    return JSONResponse(
        {
            "name": f"{_secret_name(cloud, secret.name)}/versions/{number}",
            "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc32c(data))},
        }
    )


@route("GET", S + "/{secret}/versions/{version}", "secretmanager.versions.get")
async def versions_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret, number = _version(cloud, m)
    return JSONResponse(_version_json(cloud, secret, number))


@route("GET", S + "/{secret}/versions", "secretmanager.versions.list")
async def versions_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    secret = _secret(cloud, m)
    versions = [_version_json(cloud, secret, v.number) for v in reversed(secret.versions)]
    return JSONResponse({"versions": versions, "totalSize": len(versions)})


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
    if name in cloud.secrets:
        raise ApiError(
            409, "alreadyExists", f"Secret [{_secret_name(cloud, name)}] already exists."
        )
    body = await json_body(request)
    secret = Secret(
        name,
        labels=body.get("labels") or {},
        replication=body.get("replication") or {"automatic": {}},
    )
    cloud.secrets[name] = secret
    return JSONResponse(_secret_json(cloud, secret))


@route("GET", S + "/{secret}", "secretmanager.secrets.get")
async def secrets_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(_secret_json(cloud, _secret(cloud, m)))


@route("DELETE", S + "/{secret}", "secretmanager.secrets.delete")
async def secrets_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    cloud.secrets.pop(_secret(cloud, m).name)
    return JSONResponse({})


@route("GET", S, "secretmanager.secrets.list")
async def secrets_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    items = [_secret_json(cloud, s) for s in cloud.secrets.values()]
    return JSONResponse({"secrets": items, "totalSize": len(items)})


# -- the metadata server ---------------------------------------------------------------------


async def metadata(cloud: Cloud, request: Request, inst: Instance | None, key: str) -> Response:
    """A read of the metadata server (gcp_emulator/metadata.py): text, a listing or JSON, with
    its ETag; with wait_for_change=true, once the value's ETag is no longer last_etag (or, with
    no last_etag, once it changes), or at timeout_sec."""
    if request.headers.get("metadata-flavor") != "Google":
        return PlainTextResponse(
            "Missing Metadata-Flavor:Google header.", 403, headers={"Metadata-Flavor": "Google"}
        )
    q = request.query_params
    recursive = q.get("recursive", "").lower() == "true"
    value = metadata_tree.lookup(cloud, inst, key)
    if q.get("wait_for_change", "").lower() == "true" and value is not None:
        try:
            timeout = min(float(q.get("timeout_sec", "300")), 3600.0)
        except ValueError:
            return PlainTextResponse("Invalid timeout_sec.", 400)
        last = q.get("last_etag") or metadata_tree.etag(value)
        deadline = time.monotonic() + timeout
        while metadata_tree.etag(value) == last and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            value = metadata_tree.lookup(cloud, inst, key)
            if value is None:
                break
    if value is None:
        return PlainTextResponse("Not Found", 404, headers={"Metadata-Flavor": "Google"})
    headers = {"Metadata-Flavor": "Google", "ETag": metadata_tree.etag(value)}
    alt = q.get("alt", "json" if recursive else "text")
    if isinstance(value, (dict, list)) and not recursive and value is not metadata_tree.TOKEN:
        attributes = key.rstrip("/").endswith("attributes")
        if alt == "json":
            entries = value if isinstance(value, list) else sorted(value)
            return JSONResponse(entries if attributes else value, headers=headers)
        return PlainTextResponse(metadata_tree.listing(value, attributes), headers=headers)
    if alt == "json" or isinstance(value, (dict, list)):
        return JSONResponse(value, headers=headers)
    return PlainTextResponse(str(value), headers=headers)


GA = "/vm/{zone}/{instance}/computeMetadata/v1/instance/guest-attributes/{namespace}/{key}"


def _guest_attribute(cloud: Cloud, request: Request, m: dict[str, str]) -> tuple[Instance, str]:
    """The instance and "namespace/key" of a guest's guest-attribute call, or the error the
    metadata server answers (as text, like the rest of the metadata server)."""
    inst = cloud.instance(cloud.project, m["zone"], m["instance"])
    if request.headers.get("metadata-flavor") != "Google":
        raise MetadataError(403, "Missing Metadata-Flavor:Google header.")
    if not inst.guest_attributes_enabled():
        raise MetadataError(403, "Guest attributes endpoint access is disabled.")
    for name in (m["namespace"], m["key"]):
        if not GUEST_ATTRIBUTE_NAME.fullmatch(name):
            raise MetadataError(400, f"Invalid guest attribute name: {name!r}.")
    return inst, f"{m['namespace']}/{m['key']}"


class MetadataError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@route("PUT", GA, "metadata.guestAttributes.put")
async def guest_attribute_put(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    headers = {"Metadata-Flavor": "Google"}
    try:
        inst, path = _guest_attribute(cloud, request, m)
        value = await request.body()
        if len(value) > MAX_GUEST_ATTRIBUTE_BYTES:
            raise MetadataError(400, "Guest attribute value too large.")
    except MetadataError as err:
        return PlainTextResponse(err.text, err.code, headers=headers)
    inst.guest_attributes[path] = value.decode("utf-8", "replace")
    cloud.record("event", event="guest_attribute", instance=f"{inst.zone}/{inst.name}", key=path)
    return PlainTextResponse("", headers=headers)


@route("GET", GA, "metadata.guestAttributes.get")
async def guest_attribute_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    headers = {"Metadata-Flavor": "Google"}
    try:
        inst, path = _guest_attribute(cloud, request, m)
    except MetadataError as err:
        return PlainTextResponse(err.text, err.code, headers=headers)
    if path not in inst.guest_attributes:
        return PlainTextResponse("Not Found", 404, headers=headers)
    return PlainTextResponse(inst.guest_attributes[path], headers=headers)


@route("GET", "/vm/{zone}/{instance}/computeMetadata/v1/{rest}", "metadata.get")
async def guest_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = cloud.instance(cloud.project, m["zone"], m["instance"])
    return await metadata(cloud, request, inst, m["rest"])


@route("GET", "/computeMetadata/v1/{rest}", "metadata.get")
async def plain_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return await metadata(cloud, request, None, m["rest"])


@route("POST", "/vm/{zone}/{instance}/emulator/poweroff", "guest.poweroff")
async def guest_poweroff(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    cloud.power_off_from_guest(cloud.instance(cloud.project, m["zone"], m["instance"]))
    return PlainTextResponse("powering off\n")


# -- test hooks ------------------------------------------------------------------------------


class LengthRequired(Exception):
    """A POST without Content-Length: Google's front end refuses it over HTTP/1.1."""


# Google's front end answers a POST without Content-Length (HTTP/1.1) with HTTP 411 and an HTML
# page of its own, not the API's JSON error (docs/google-cloud.md, "gcloud and the Compute API").
LENGTH_REQUIRED_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 411 (Length Required)!!1</title>\n"
    "  <p><b>411.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>POST requests require a <code>Content-length</code> header.  "
    "<ins>That\u2019s all we know.</ins>\n"
)


class EmulatorApp:
    """The ASGI app: routing, auth, journal and fault injection around the handlers."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.faults: dict[str, Fault] = {}
        self.app = Starlette(
            routes=[
                Route("/_emulator/{hook:path}", self.hooks, methods=["GET", "POST", "DELETE"]),
                Route(
                    "/{path:path}", self.dispatch, methods=["GET", "POST", "DELETE", "PATCH", "PUT"]
                ),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def _match(self, method: str, path: str) -> tuple[RouteDef, dict[str, str]] | None:
        for r in ROUTES:
            if r.method == method:
                hit = r.pattern.match(path)
                if hit:
                    return r, hit.groupdict()
        return None

    async def dispatch(self, request: Request) -> Response:
        started = time.time()
        path = request.url.path
        found = self._match(request.method, path)
        api = found[0].api if found else "unknown"
        try:
            response = await self._answer(request, found)
        except LengthRequired:
            response = HTMLResponse(LENGTH_REQUIRED_PAGE, status_code=411)
        except ApiError as err:
            response = error_response(api, err)
        except Exception:
            logger.exception("emulator error on %s %s", request.method, path)
            response = error_response(api, ApiError(500, "backendError", "Internal error."))
        self.cloud.record(
            "request",
            method=request.method,
            path=path,
            query=request.url.query,
            api=api,
            status=response.status_code,
            duration=round(time.time() - started, 4),
        )
        return response

    async def _answer(
        self, request: Request, found: tuple[RouteDef, dict[str, str]] | None
    ) -> Response:
        if found is None:
            raise ApiError(
                404, "notFound", f"The emulator does not answer {request.method} {request.url.path}"
            )
        rdef, params = found
        family = api_family(rdef.api)
        if family in ("compute", "secretmanager"):
            if request.method == "POST" and not (
                "content-length" in request.headers or "transfer-encoding" in request.headers
            ):
                raise LengthRequired()
            if not request.headers.get("authorization", "").startswith("Bearer "):
                raise ApiError(
                    401,
                    "required",
                    "Request is missing required authentication "
                    "credential. Expected OAuth 2 access token.",
                )
        if family == "compute":
            iam.check(rdef.api, request.url.path, self.cloud.cfg.permissions)
        fault = self.faults.get(rdef.api)
        if fault is not None and fault.count != 0:
            if fault.count > 0:
                fault.count -= 1
            if fault.delay:
                # the request is whole at the server before it is slow to act on it: a caller
                # that gives up meanwhile does not stop it (its answer is lost, not the call)
                await request.body()
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                raise fault_error(fault.status, fault.message)
        return await rdef.handler(self.cloud, request, params)

    async def hooks(self, request: Request) -> Response:
        hook = request.path_params["hook"]
        cloud = self.cloud
        method = request.method
        try:
            if hook == "health":
                return JSONResponse({"status": "ok", "time": now_rfc3339()})
            if hook == "journal" and method == "GET":
                since = int(request.query_params.get("since", "0"))
                return JSONResponse({"entries": [e for e in cloud.journal if e["seq"] > since]})
            if hook == "journal" and method == "DELETE":
                cloud.journal.clear()
                return JSONResponse({})
            if hook == "state" and method == "GET":
                return JSONResponse(cloud.state_json())
            if hook == "faults" and method == "POST":
                body = await json_body(request)
                self.faults[str(body["api"])] = Fault(
                    status=body.get("status"),
                    count=int(body.get("count", 1)),
                    delay=float(body.get("delay", 0)),
                    message=str(body.get("message", "")),
                )
                return JSONResponse({})
            if hook == "faults" and method == "DELETE":
                self.faults.clear()
                return JSONResponse({})
            if hook == "stockouts" and method == "POST":
                body = await json_body(request)
                code = str(body.get("code", CAPACITY_CODES[0]))
                if code not in CAPACITY_CODES:
                    raise ValueError(f"code must be one of {', '.join(CAPACITY_CODES)}")
                cloud.stockouts.append(
                    Stockout(
                        zone=str(body.get("zone", cloud.cfg.zone)),
                        machine_type=str(body.get("machine_type", "*")),
                        code=code,
                        count=int(body.get("count", -1)),
                    )
                )
                return JSONResponse({})
            if hook == "stockouts" and method == "DELETE":
                cloud.stockouts.clear()
                return JSONResponse({})
            hit = re.fullmatch(r"instances/([^/]+)/([^/]+)", hook)
            if hit and method == "POST":
                inst = cloud.instance(cloud.project, hit[1], hit[2])
                body = await json_body(request)
                return JSONResponse(await self._set_instance(inst, body))
            hit = re.fullmatch(r"secrets/([^/]+)", hook)
            if hit and method == "POST":
                body = await json_body(request)
                secret = cloud.secrets.get(hit[1]) or cloud.secrets.setdefault(
                    hit[1], Secret(hit[1])
                )
                secret.add(str(body["value"]).encode())
                return JSONResponse({"versions": len(secret.versions)})
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad test-hook request: {exc}"}, status_code=400)
        except ApiError as err:
            return error_response("compute", err)
        return JSONResponse({"error": f"no such test hook: {method} {hook}"}, status_code=404)

    async def _set_instance(self, inst: Instance, body: dict[str, Any]) -> dict[str, Any]:
        """Put an instance in a state directly: leftovers of a dead run, slow boots, ...
        With "if_status", nothing changes unless the instance is in that status now (409
        otherwise): a test ends a repair only if nothing has stopped the VM meanwhile."""
        if "if_status" in body and inst.status != body["if_status"]:
            raise ApiError(
                409, "conflict", f"{inst.name} is {inst.status}, not {body['if_status']}"
            )
        for key in (
            "provision_delay",
            "staging_delay",
            "boot_delay",
            "stop_delay",
            "shutdown_grace",
        ):
            if key in body:
                setattr(inst.cfg, key, float(body[key]))
        if "env" in body:
            inst.cfg.env.update({str(k): str(v) for k, v in body["env"].items()})
        if "metadata" in body:
            inst.metadata.update({str(k): str(v) for k, v in body["metadata"].items()})
        if "labels" in body:
            inst.labels = {str(k): str(v) for k, v in body["labels"].items()}
            inst.label_fingerprint = fingerprint()
        if "access_configs" in body:
            for ac in list(inst.access_configs):
                self.cloud.delete_access_config(inst, "nic0", ac["name"])
            for ac in body["access_configs"][:1]:
                self.cloud.add_access_config(inst, "nic0", dict(ac))
        if body.get("preempt"):
            self.cloud.preempt(inst)
        if "status" in body:
            self.cloud.force_state(inst, str(body["status"]))
            deadline = time.monotonic() + 30
            while inst.status != body["status"] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        return {"status": inst.status}

"""Compute Engine v1's HTTP surface: each request into a call of the Compute backend
(compute/models.py), and its answer in Compute's shape (docs/emulator.md, "What it answers")."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.compute.models import Instance
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud

route = service_route("compute")


C = "/compute/v1/projects/{project}"


def _inst(cloud: Cloud, m: dict[str, str]) -> Instance:
    return cloud.compute.instance(m["project"], m["zone"], m["instance"])


def _op(cloud: Cloud, op: Any) -> Response:
    return JSONResponse(cloud.compute.operation_json(op))


@route("GET", C + "/zones/{zone}/instances/{instance}", "compute.instances.get")
async def instances_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.compute.instance_json(_inst(cloud, m)))


@route("GET", C + "/zones/{zone}/instances", "compute.instances.list")
async def instances_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    items = [
        cloud.compute.instance_json(i)
        for (z, _n), i in sorted(cloud.compute.instances.items())
        if z == m["zone"] and m["project"] == cloud.project
    ]
    return JSONResponse(
        {
            "kind": "compute#instanceList",
            "items": items,
            "selfLink": cloud.compute.link(f"projects/{cloud.project}/zones/{m['zone']}/instances"),
        }
    )


@route("POST", C + "/zones/{zone}/instances/{instance}/start", "compute.instances.start")
async def instances_start(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.compute.start(_inst(cloud, m)))


@route("POST", C + "/zones/{zone}/instances/{instance}/stop", "compute.instances.stop")
async def instances_stop(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.compute.stop(_inst(cloud, m)))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/addAccessConfig",
    "compute.instances.addAccessConfig",
)
async def add_access_config(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    body = await json_body(request)
    nic = request.query_params.get("networkInterface", "")
    return _op(cloud, cloud.compute.add_access_config(inst, nic, body))


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
        cloud.compute.delete_access_config(
            inst, q.get("networkInterface", ""), q.get("accessConfig", "")
        ),
    )


@route(
    "POST", C + "/zones/{zone}/instances/{instance}/setMetadata", "compute.instances.setMetadata"
)
async def set_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.compute.set_metadata(inst, await json_body(request)))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/setMachineType",
    "compute.instances.setMachineType",
)
async def set_machine_type(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.compute.set_machine_type(inst, await json_body(request)))


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/setScheduling",
    "compute.instances.setScheduling",
)
async def set_scheduling(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.compute.set_scheduling(inst, await json_body(request)))


@route("POST", C + "/zones/{zone}/instances/{instance}/setLabels", "compute.instances.setLabels")
async def set_labels(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.compute.set_labels(inst, await json_body(request)))


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
            "selfLink": cloud.compute.link(inst.path) + "/serialPort",
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
        "selfLink": cloud.compute.link(inst.path) + "/getGuestAttributes",
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
    return JSONResponse(
        cloud.compute.address_json(cloud.compute.address(m["project"], m["region"], m["address"]))
    )


@route("GET", C + "/regions/{region}/addresses", "compute.addresses.list")
async def addresses_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    items = [
        cloud.compute.address_json(a)
        for (r, _n), a in sorted(cloud.compute.addresses.items())
        if r == m["region"] and m["project"] == cloud.project
    ]
    return JSONResponse({"kind": "compute#addressList", "items": items})


@route("GET", C + "/zones/{zone}/operations/{operation}", "compute.zoneOperations.get")
async def operations_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.compute.operation(m["project"], m["zone"], m["operation"]))


@route("POST", C + "/zones/{zone}/operations/{operation}/wait", "compute.zoneOperations.wait")
async def operations_wait(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    op = cloud.compute.operation(m["project"], m["zone"], m["operation"])
    # Like the real wait: after the cap, answer with the operation as it is, not DONE yet.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(op.done.wait(), cloud.cfg.operation_wait_cap)
    return _op(cloud, op)

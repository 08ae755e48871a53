"""Compute Engine v1's HTTP surface: each request into a call of the Compute backend
(compute/models.py), and its answer in Compute's shape (docs/emulator.md, "What it answers")."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.compute import catalog, permissions
from gcp_emulator.compute.models import Instance
from gcp_emulator.core.errors import ApiError, not_found
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


def _scope(m: dict[str, str]) -> str:
    """An operation's scope from its path: zones/Z, regions/R or global."""
    if "zone" in m:
        return f"zones/{m['zone']}"
    if "region" in m:
        return f"regions/{m['region']}"
    return "global"


async def _get_operation(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.compute.operation(m["project"], _scope(m), m["operation"]))


async def _wait_operation(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    op = cloud.compute.operation(m["project"], _scope(m), m["operation"])
    # Like the real wait: after the cap, answer with the operation as it is, not DONE yet.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(op.done.wait(), cloud.cfg.operation_wait_cap)
    return _op(cloud, op)


for _prefix, _kind in (
    ("/zones/{zone}", "zoneOperations"),
    ("/regions/{region}", "regionOperations"),
    ("/global", "globalOperations"),
):
    route("GET", C + _prefix + "/operations/{operation}", f"compute.{_kind}.get")(_get_operation)
    route("POST", C + _prefix + "/operations/{operation}/wait", f"compute.{_kind}.wait")(
        _wait_operation
    )


# -- what a deployment creates: instances, addresses, firewall rules ---------------------------


def _own_project(cloud: Cloud, m: dict[str, str]) -> None:
    if m["project"] != cloud.project:
        raise not_found(f"projects/{m['project']}")


def _authorization(request: Request) -> str:
    return request.headers.get("authorization", "")


@route("POST", C + "/zones/{zone}/instances", "compute.instances.insert")
async def instances_insert(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    _own_project(cloud, m)
    body = await json_body(request)
    permissions.require(
        cloud,
        "compute.instances.insert",
        _authorization(request),
        request.url.path,
        permissions.insert_permissions(body),
    )
    principal = cloud.iam.principal_of(_authorization(request))
    return _op(cloud, cloud.compute.insert_instance(m["zone"], body, principal))


@route("DELETE", C + "/zones/{zone}/instances/{instance}", "compute.instances.delete")
async def instances_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return _op(cloud, cloud.compute.delete_instance(_inst(cloud, m)))


@route("GET", C + "/aggregated/instances", "compute.instances.aggregatedList")
async def instances_aggregated(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    _own_project(cloud, m)
    items: dict[str, Any] = {}
    for (zone, _n), inst in sorted(cloud.compute.instances.items()):
        scope = items.setdefault(f"zones/{zone}", {"instances": []})
        scope["instances"].append(cloud.compute.instance_json(inst))
    return JSONResponse(
        {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{cloud.project}",
            "items": items,
            "selfLink": cloud.compute.link(f"projects/{cloud.project}/aggregated/instances"),
        }
    )


@route(
    "POST",
    C + "/zones/{zone}/instances/{instance}/setServiceAccount",
    "compute.instances.setServiceAccount",
)
async def set_service_account(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    body = await json_body(request)
    principal = cloud.iam.principal_of(_authorization(request))
    return _op(cloud, cloud.compute.set_service_account(inst, body, principal))


@route("POST", C + "/zones/{zone}/instances/{instance}/setTags", "compute.instances.setTags")
async def set_tags(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = _inst(cloud, m)
    return _op(cloud, cloud.compute.set_tags(inst, await json_body(request)))


@route("POST", C + "/regions/{region}/addresses", "compute.addresses.insert")
async def addresses_insert(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    body = await json_body(request)
    return _op(cloud, cloud.compute.insert_address(m["project"], m["region"], body))


@route("DELETE", C + "/regions/{region}/addresses/{address}", "compute.addresses.delete")
async def addresses_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    addr = cloud.compute.address(m["project"], m["region"], m["address"])
    return _op(cloud, cloud.compute.delete_address(addr))


@route("GET", C + "/aggregated/addresses", "compute.addresses.aggregatedList")
async def addresses_aggregated(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    _own_project(cloud, m)
    items: dict[str, Any] = {}
    for (region, _n), addr in sorted(cloud.compute.addresses.items()):
        scope = items.setdefault(f"regions/{region}", {"addresses": []})
        scope["addresses"].append(cloud.compute.address_json(addr))
    return JSONResponse(
        {
            "kind": "compute#addressAggregatedList",
            "id": f"projects/{cloud.project}",
            "items": items,
            "selfLink": cloud.compute.link(f"projects/{cloud.project}/aggregated/addresses"),
        }
    )


@route("POST", C + "/global/firewalls", "compute.firewalls.insert")
async def firewalls_insert(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    body = await json_body(request)
    return _op(cloud, cloud.compute.insert_firewall(m["project"], body))


@route("GET", C + "/global/firewalls", "compute.firewalls.list")
async def firewalls_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    _own_project(cloud, m)
    return JSONResponse(
        {
            "kind": "compute#firewallList",
            "id": f"projects/{cloud.project}/global/firewalls",
            "items": [
                cloud.compute.firewall_json(fw)
                for _n, fw in sorted(cloud.compute.firewalls.items())
            ],
            "selfLink": cloud.compute.link(f"projects/{cloud.project}/global/firewalls"),
        }
    )


@route("GET", C + "/global/firewalls/{firewall}", "compute.firewalls.get")
async def firewalls_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    fw = cloud.compute.firewall(m["project"], m["firewall"])
    return JSONResponse(cloud.compute.firewall_json(fw))


@route("PATCH", C + "/global/firewalls/{firewall}", "compute.firewalls.patch")
async def firewalls_patch(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    fw = cloud.compute.firewall(m["project"], m["firewall"])
    return _op(cloud, cloud.compute.patch_firewall(fw, await json_body(request)))


@route("DELETE", C + "/global/firewalls/{firewall}", "compute.firewalls.delete")
async def firewalls_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    fw = cloud.compute.firewall(m["project"], m["firewall"])
    return _op(cloud, cloud.compute.delete_firewall(fw))


# -- what gcloud looks up: the default network, zones, the project, machine types, images -------


@route("GET", C + "/global/networks/{network}", "compute.networks.get")
async def networks_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    if m["project"] != cloud.project or m["network"] != "default":
        raise not_found(f"projects/{m['project']}/global/networks/{m['network']}")
    return JSONResponse(cloud.compute.network_json())


@route("GET", C + "/global/networks", "compute.networks.list")
async def networks_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    _own_project(cloud, m)
    return JSONResponse(
        {
            "kind": "compute#networkList",
            "id": f"projects/{cloud.project}/global/networks",
            "items": [cloud.compute.network_json()],
            "selfLink": cloud.compute.link(f"projects/{cloud.project}/global/networks"),
        }
    )


@route("GET", C + "/regions/{region}/subnetworks/{subnetwork}", "compute.subnetworks.get")
async def subnetworks_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.compute.subnetwork_json(m["project"], m["region"], m["subnetwork"]))


@route("GET", C + "/zones/{zone}", "compute.zones.get")
async def zones_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.compute.zone_json(m["project"], m["zone"]))


@route("GET", C, "compute.projects.get")
async def projects_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.compute.project_json(m["project"]))


@route("GET", C + "/zones/{zone}/machineTypes/{machine_type}", "compute.machineTypes.get")
async def machine_types_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.compute.machine_type_json(m["project"], m["zone"], m["machine_type"]))


@route("GET", C + "/global/images/family/{family}", "compute.images.getFromFamily")
async def images_from_family(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    image = catalog.image_by_family(m["project"], m["family"])
    if image is None:
        raise not_found(f"projects/{m['project']}/global/images/family/{m['family']}")
    return JSONResponse(cloud.compute.image_json(image))


@route("GET", C + "/global/images/{image}", "compute.images.get")
async def images_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    image = catalog.image_by_name(m["project"], m["image"])
    if image is None:
        raise not_found(f"projects/{m['project']}/global/images/{m['image']}")
    return JSONResponse(cloud.compute.image_json(image))


@route("GET", C + "/zones/{zone}/imageFamilyViews/{family}", "compute.imageFamilyViews.get")
async def image_family_views_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    image = catalog.image_by_family(m["project"], m["family"])
    if image is None:
        raise not_found(f"projects/{m['project']}/zones/{m['zone']}/imageFamilyViews/{m['family']}")
    return JSONResponse({"image": cloud.compute.image_json(image)})

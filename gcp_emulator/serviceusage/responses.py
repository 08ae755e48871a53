"""Service Usage v1's HTTP surface (serviceusage.googleapis.com): a service, the enabled ones,
enabling and disabling, and their operations (done at once)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud
from gcp_emulator.serviceusage.models import TITLES

P = "/v1/projects/{project}/services"


route = service_route("serviceusage")


def check_project(cloud: Cloud, project: str) -> None:
    if project not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", f"Permission denied to access project {project}.")


@route("GET", P + "/{service}", "serviceusage.services.get")
async def services_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m["project"])
    return JSONResponse(cloud.serviceusage.service_json(m["service"]))


@route("GET", P, "serviceusage.services.list")
async def services_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m["project"])
    usage = cloud.serviceusage
    wanted = request.query_params.get("filter", "")
    names = sorted(TITLES)
    services = [usage.service_json(n) for n in names]
    if "state:ENABLED" in wanted:
        services = [s for s in services if s["state"] == "ENABLED"]
    elif "state:DISABLED" in wanted:
        services = [s for s in services if s["state"] == "DISABLED"]
    return JSONResponse({"services": services} if services else {})


@route("POST", P + ":batchEnable", "serviceusage.services.batchEnable")
async def services_batch_enable(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m["project"])
    body = await json_body(request)
    names = [str(n) for n in body.get("serviceIds") or []]
    if not names:
        raise ApiError(400, "invalid", "serviceIds must not be empty.")
    return JSONResponse(cloud.serviceusage.enable(names))


@route("POST", P + "/{service}:enable", "serviceusage.services.enable")
async def services_enable(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m["project"])
    return JSONResponse(cloud.serviceusage.enable([m["service"]]))


@route("POST", P + "/{service}:disable", "serviceusage.services.disable")
async def services_disable(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m["project"])
    return JSONResponse(cloud.serviceusage.disable(m["service"]))


@route("GET", "/v1/operations/{operation}", "serviceusage.operations.get")
async def operations_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    op = cloud.serviceusage.operations.get(f"operations/{m['operation']}")
    if op is None:
        raise ApiError(404, "notFound", f"Operation operations/{m['operation']} not found.")
    return JSONResponse(op)

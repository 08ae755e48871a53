"""Cloud Build v1's HTTP surface, as `gcloud builds submit --tag` uses it: builds.create (an
operation whose metadata is the build: gcloud never polls the operation), builds.get (polled while
QUEUED or WORKING), builds.list, builds.cancel; the legacy paths without a location are the
`global` location's. The build's log is an object of its logs bucket that gcloud reads as it
grows (storage/responses.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.cloudbuild.models import Build
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud

route = service_route("cloudbuild")
L = "/v1/projects/{project}/locations/{location}"


def check_project(cloud: Cloud, m: dict[str, str]) -> str:
    if m["project"] not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", f"The caller does not have permission on {m['project']}")
    return m.get("location", "global")


def build_json(cloud: Cloud, build: Build) -> dict[str, Any]:
    number = cloud.cfg.project_number
    body: dict[str, Any] = {
        "name": f"projects/{number}/locations/{build.location}/builds/{build.id}",
        "id": build.id,
        "projectId": cloud.project,
        "status": build.status,
        "createTime": build.created,
        "timeout": f"{build.timeout:g}s",
        "queueTtl": "3600s",
        "logsBucket": f"gs://{build.log_bucket}",
        "logUrl": (
            f"https://console.cloud.google.com/cloud-build/builds;region={build.location}/"
            f"{build.id}?project={number}"
        ),
        "options": {"logging": "LEGACY"},
        "serviceAccount": (
            f"projects/{cloud.project}/serviceAccounts/{number}-compute@developer.gserviceaccount.com"
        ),
    }
    for key in ("source", "steps", "images"):
        if key in build.request:
            body[key] = build.request[key]
    if build.started:
        body["startTime"] = build.started
    if build.finished:
        body["finishTime"] = build.finished
    if build.status == "SUCCESS":
        body["results"] = {
            "images": [{"name": tag, "digest": build.digest} for tag in build.tags],
            "buildStepImages": [""],
        }
    if build.status in ("FAILURE", "TIMEOUT") and build.failure:
        body["failureInfo"] = {"type": "USER_BUILD_STEP", "detail": build.failure}
        body["statusDetail"] = build.failure
    return body


@route(
    "POST", L + "/builds", "cloudbuild.projects.locations.builds.create", "cloudbuild.builds.create"
)
async def builds_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    location = check_project(cloud, m)
    build = cloud.builds.submit(location, await json_body(request))
    number = cloud.cfg.project_number
    return JSONResponse(
        {
            "name": f"projects/{number}/locations/{location}/operations/{build.id}",
            "metadata": {
                "@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
                "build": build_json(cloud, build),
            },
        }
    )


@route(
    "GET",
    L + "/builds/{build}",
    "cloudbuild.projects.locations.builds.get",
    "cloudbuild.builds.get",
)
async def builds_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m)
    return JSONResponse(build_json(cloud, cloud.builds.build(m["build"])))


@route("GET", L + "/builds", "cloudbuild.projects.locations.builds.list", "cloudbuild.builds.list")
async def builds_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    location = check_project(cloud, m)
    builds = [
        build_json(cloud, b)
        for b in sorted(cloud.builds.builds.values(), key=lambda b: b.created, reverse=True)
        if b.location == location and b.request
    ]
    return JSONResponse({"builds": builds} if builds else {})


@route(
    "POST",
    L + "/builds/{build}:cancel",
    "cloudbuild.projects.locations.builds.cancel",
    "cloudbuild.builds.update",
)
async def builds_cancel(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_project(cloud, m)
    return JSONResponse(build_json(cloud, cloud.builds.cancel(cloud.builds.build(m["build"]))))


# the legacy paths (no location): the global location's
for _method, _path, _fn, _api, _permission in (
    ("POST", "/v1/projects/{project}/builds", builds_create, "create", "create"),
    ("GET", "/v1/projects/{project}/builds/{build}", builds_get, "get", "get"),
    ("GET", "/v1/projects/{project}/builds", builds_list, "list", "list"),
    ("POST", "/v1/projects/{project}/builds/{build}:cancel", builds_cancel, "cancel", "update"),
):
    route(_method, _path, f"cloudbuild.projects.builds.{_api}", f"cloudbuild.builds.{_permission}")(
        _fn
    )

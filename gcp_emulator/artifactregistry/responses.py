"""Artifact Registry v1's HTTP surface, as gcloud 528's `artifacts repositories create|describe|
list|delete` and `artifacts docker images list` call it: repositories (create and delete answer an
operation, done at once, that gcloud polls), their Docker images, the operations; and v1beta2's
locations list, which `repositories list` without --location reads first."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.artifactregistry.models import Repository
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud

route = service_route("artifactregistry")
L = "/v1/projects/{project}/locations/{location}"
R = L + "/repositories/{repository}"


def parent_of(cloud: Cloud, m: dict[str, str]) -> str:
    if m["project"] not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", f"Permission denied on resource project {m['project']}.")
    return f"projects/{cloud.project}/locations/{m['location']}"


def repository_json(repo: Repository) -> dict[str, Any]:
    _, project, _, location, _, name = repo.name.split("/")
    return {**repo.json(), "registryUri": f"{location}-docker.pkg.dev/{project}/{name}"}


@route(
    "POST",
    L + "/repositories",
    "artifactregistry.projects.locations.repositories.create",
    "artifactregistry.repositories.create",
)
async def repositories_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    parent = parent_of(cloud, m)
    repo_id = request.query_params.get("repositoryId", "")
    repo = cloud.images.create(parent, repo_id, await json_body(request))
    return JSONResponse(cloud.images.operation(parent, repository_json(repo), "Repository"))


@route(
    "GET",
    R,
    "artifactregistry.projects.locations.repositories.get",
    "artifactregistry.repositories.get",
)
async def repositories_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{parent_of(cloud, m)}/repositories/{m['repository']}"
    return JSONResponse(repository_json(cloud.images.repository(name)))


@route(
    "GET",
    L + "/repositories",
    "artifactregistry.projects.locations.repositories.list",
    "artifactregistry.repositories.list",
)
async def repositories_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    parent = parent_of(cloud, m)
    repos = [
        repository_json(r)
        for n, r in sorted(cloud.images.repositories.items())
        if n.startswith(parent + "/")
    ]
    return JSONResponse({"repositories": repos} if repos else {})


@route(
    "DELETE",
    R,
    "artifactregistry.projects.locations.repositories.delete",
    "artifactregistry.repositories.delete",
)
async def repositories_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    parent = parent_of(cloud, m)
    cloud.images.delete(f"{parent}/repositories/{m['repository']}")
    return JSONResponse(cloud.images.operation(parent, None, "Empty"))


@route(
    "GET",
    R + "/dockerImages",
    "artifactregistry.projects.locations.repositories.dockerImages.list",
    "artifactregistry.dockerimages.list",
)
async def docker_images_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    repo = cloud.images.repository(f"{parent_of(cloud, m)}/repositories/{m['repository']}")
    images = cloud.images.docker_images(repo)
    return JSONResponse({"dockerImages": images} if images else {})


@route(
    "GET",
    L + "/operations/{operation}",
    "artifactregistry.projects.locations.operations.get",
    "artifactregistry.repositories.get",
)
async def operations_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{parent_of(cloud, m)}/operations/{m['operation']}"
    op = cloud.images.operations.get(name)
    if op is None:
        raise ApiError(404, "notFound", f"Operation {name} not found.")
    return JSONResponse(op)


@route(
    "GET",
    "/v1beta2/projects/{project}/locations",
    "artifactregistry.projects.locations.list",
    "artifactregistry.locations.list",
)
async def locations_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    regions = sorted({cloud.cfg.region, *(n.split("/")[3] for n in cloud.images.repositories)})
    return JSONResponse(
        {
            "locations": [
                {"name": f"projects/{cloud.project}/locations/{r}", "locationId": r}
                for r in regions
            ]
        }
    )

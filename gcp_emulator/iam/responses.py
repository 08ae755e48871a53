"""IAM v1's HTTP surface (iam.googleapis.com: service accounts, roles) and Resource Manager v1's
(cloudresourcemanager.googleapis.com: the project and its IAM policy), as gcloud 528 calls them
(docs/emulator.md, "What it answers"). A service account is found by its email whatever project
the path names (`projects/-/serviceAccounts/EMAIL`, as gcloud sends it)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud
from gcp_emulator.iam.models import PREDEFINED

A = "/v1/projects/{project}/serviceAccounts"
R = "/v1/projects/{project}/roles"


iam_route = service_route("iam")
crm_route = service_route("cloudresourcemanager")


def own_project(cloud: Cloud, project: str) -> None:
    if project not in (cloud.project, str(cloud.cfg.project_number), "-"):
        raise ApiError(403, "forbidden", f"Permission denied on resource project {project}.")


# -- service accounts ------------------------------------------------------------------------


@iam_route("POST", A, "iam.serviceAccounts.create")
async def accounts_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    own_project(cloud, m["project"])
    body = await json_body(request)
    account = cloud.iam.create_account(
        str(body.get("accountId", "")), body.get("serviceAccount") or {}
    )
    return JSONResponse(account.json(cloud.cfg.project_number))


@iam_route("GET", A, "iam.serviceAccounts.list")
async def accounts_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    own_project(cloud, m["project"])
    accounts = [a.json(cloud.cfg.project_number) for _, a in sorted(cloud.iam.accounts.items())]
    return JSONResponse({"accounts": accounts} if accounts else {})


@iam_route("GET", A + "/{email}", "iam.serviceAccounts.get")
async def accounts_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.iam.account(m["email"]).json(cloud.cfg.project_number))


@iam_route("DELETE", A + "/{email}", "iam.serviceAccounts.delete")
async def accounts_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    cloud.iam.delete_account(m["email"])
    return JSONResponse({})


@iam_route("POST", A + "/{email}:getIamPolicy", "iam.serviceAccounts.getIamPolicy")
async def accounts_get_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.iam.account(m["email"]).policy.json())


@iam_route("POST", A + "/{email}:setIamPolicy", "iam.serviceAccounts.setIamPolicy")
async def accounts_set_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    account = cloud.iam.account(m["email"])
    body = await json_body(request)
    return JSONResponse(account.policy.set(body.get("policy") or {}).json())


@iam_route(
    "POST", "/v1/permissions:queryTestablePermissions", "iam.permissions.queryTestablePermissions"
)
async def testable_permissions(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    """What gcloud asks before it creates or updates a role; the emulator lists none (gcloud then
    warns of nothing, and creates the role as asked)."""
    return JSONResponse({})


# -- roles -----------------------------------------------------------------------------------


def role_name(cloud: Cloud, m: dict[str, str]) -> str:
    own_project(cloud, m["project"])
    return f"projects/{cloud.project}/roles/{m['role']}"


@iam_route("POST", R, "iam.roles.create")
async def roles_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    own_project(cloud, m["project"])
    body = await json_body(request)
    role = cloud.iam.create_role(str(body.get("roleId", "")), body.get("role") or {})
    return JSONResponse(role.json())


@iam_route("GET", R, "iam.roles.list")
async def roles_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    own_project(cloud, m["project"])
    deleted = request.query_params.get("showDeleted", "").lower() == "true"
    roles = [r.json() for _, r in sorted(cloud.iam.roles.items()) if deleted or not r.deleted]
    return JSONResponse({"roles": roles} if roles else {})


@iam_route("GET", R + "/{role}", "iam.roles.get")
async def roles_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.iam.role(role_name(cloud, m)).json())


@iam_route("PATCH", R + "/{role}", "iam.roles.patch")
async def roles_patch(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    mask = [f for f in request.query_params.get("updateMask", "").split(",") if f]
    body = await json_body(request)
    return JSONResponse(cloud.iam.update_role(role_name(cloud, m), body, mask).json())


@iam_route("DELETE", R + "/{role}", "iam.roles.delete")
async def roles_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.iam.delete_role(role_name(cloud, m)).json())


@iam_route("POST", R + "/{role}:undelete", "iam.roles.undelete")
async def roles_undelete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.iam.undelete_role(role_name(cloud, m)).json())


@iam_route("GET", "/v1/roles/{role}", "iam.roles.get")
async def predefined_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"roles/{m['role']}"
    if name not in PREDEFINED:
        raise ApiError(404, "notFound", f"The role named {name} was not found.")
    return JSONResponse({"name": name, "etag": "AA==", **PREDEFINED[name]})


# -- the project -----------------------------------------------------------------------------


def project_json(cloud: Cloud) -> dict[str, Any]:
    return {
        "projectNumber": str(cloud.cfg.project_number),
        "projectId": cloud.project,
        "lifecycleState": "ACTIVE",
        "name": cloud.project,
        "createTime": "2026-01-01T00:00:00.000Z",
        "parent": {"type": "organization", "id": "1234567890"},
    }


@crm_route("GET", "/v1/projects/{project}", "cloudresourcemanager.projects.get")
async def projects_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    if m["project"] not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", "The caller does not have permission")
    return JSONResponse(project_json(cloud))


@crm_route(
    "POST", "/v1/projects/{project}:getIamPolicy", "cloudresourcemanager.projects.getIamPolicy"
)
async def projects_get_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    own_project(cloud, m["project"])
    return JSONResponse(cloud.iam.policy.json())


@crm_route(
    "POST", "/v1/projects/{project}:setIamPolicy", "cloudresourcemanager.projects.setIamPolicy"
)
async def projects_set_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    own_project(cloud, m["project"])
    body = await json_body(request)
    return JSONResponse(cloud.iam.policy.set(body.get("policy") or {}).json())

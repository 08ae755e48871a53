"""Cloud Logging v2's HTTP surface (logging.googleapis.com): entries.list, as `gcloud logging
read` calls it (and `gcloud run jobs logs read`, in the private network only: gcloud run resolves
regional names), and entries.write."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud

route = service_route("logging")


@route("POST", "/v2/entries:list", "logging.entries.list", "logging.logEntries.list")
async def entries_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    body = await json_body(request)
    names = [str(n) for n in body.get("resourceNames") or body.get("projectIds") or []]
    names = [n if n.startswith("projects/") else f"projects/{n}" for n in names]
    try:
        size = int(body.get("pageSize") or 50)
    except ValueError:
        raise ApiError(400, "invalid", "pageSize must be a number.") from None
    entries, token = cloud.logging.list(
        names,
        str(body.get("filter") or ""),
        str(body.get("orderBy") or "timestamp asc"),
        min(size, 1000),
        str(body.get("pageToken") or ""),
    )
    answer: dict[str, object] = {"entries": entries} if entries else {}
    if token:
        answer["nextPageToken"] = token
    return JSONResponse(answer)


@route("POST", "/v2/entries:write", "logging.entries.write", "logging.logEntries.create")
async def entries_write(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    body = await json_body(request)
    for entry in body.get("entries") or []:
        merged = {
            "logName": body.get("logName"),
            "resource": body.get("resource"),
            "labels": body.get("labels") or {},
        }
        merged.update({k: v for k, v in entry.items() if v is not None})
        cloud.logging.write({k: v for k, v in merged.items() if v is not None})
    return JSONResponse({})

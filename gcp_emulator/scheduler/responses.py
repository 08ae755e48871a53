"""Cloud Scheduler v1's HTTP surface (cloudscheduler.googleapis.com): jobs create, get, list,
patch (updateMask), delete, pause, resume, run; the project's locations."""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud
from gcp_emulator.core.util import stamp
from gcp_emulator.scheduler.models import DEFAULT_DEADLINE, DEFAULT_RETRY, SchedulerJob, seconds

route = service_route("cloudscheduler")
L = "/v1/projects/{project}/locations/{location}"
J = L + "/jobs/{job}"


def check_location(cloud: Cloud, m: dict[str, str]) -> str:
    if m["project"] not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(
            403, "forbidden", f"The principal lacks permission on project {m['project']}."
        )
    return f"projects/{cloud.project}/locations/{m['location']}"


def job_json(job: SchedulerJob) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": job.name,
        "httpTarget": {
            **job.target,
            "headers": {
                "User-Agent": "Google-Cloud-Scheduler",
                **(job.target.get("headers") or {}),
            },
        },
        "userUpdateTime": job.updated,
        "state": job.state,
        "schedule": job.schedule,
        "timeZone": job.time_zone,
        "retryConfig": {**DEFAULT_RETRY, **job.retry},
        "attemptDeadline": job.attempt_deadline,
    }
    if job.description:
        body["description"] = job.description
    if job.state == "ENABLED" and job.next_fire:
        body["scheduleTime"] = stamp(job.next_fire)
    if job.last_attempt:
        body["lastAttemptTime"] = job.last_attempt
        body["status"] = job.status
    return body


def job_from(name: str, body: dict[str, Any]) -> SchedulerJob:
    target = body.get("httpTarget")
    if not isinstance(target, dict) or not target.get("uri"):
        raise ApiError(
            400,
            "invalid",
            "The emulator's Cloud Scheduler keeps HTTP jobs: httpTarget.uri is required.",
        )
    if not body.get("schedule"):
        raise ApiError(400, "invalid", "Schedule is required.")
    target = {k: v for k, v in target.items() if k != "headers" or v}
    headers = {k: v for k, v in (target.get("headers") or {}).items() if k.lower() != "user-agent"}
    if headers:
        target["headers"] = headers
    else:
        target.pop("headers", None)
    target.setdefault("httpMethod", "POST")
    oauth = target.get("oauthToken")
    if isinstance(oauth, dict) and oauth.get("serviceAccountEmail"):
        oauth.setdefault("scope", "https://www.googleapis.com/auth/cloud-platform")
    retry = {k: v for k, v in (body.get("retryConfig") or {}).items() if v is not None}
    for key in ("minBackoffDuration", "maxBackoffDuration", "maxRetryDuration"):
        seconds(retry.get(key))  # a bad duration is refused now, not at the first delivery
    deadline = seconds(body.get("attemptDeadline") or DEFAULT_DEADLINE)
    if not 15 <= deadline <= 1800:
        raise ApiError(400, "invalid", "attemptDeadline must be between 15 seconds and 30 minutes.")
    return SchedulerJob(
        name=name,
        schedule=str(body["schedule"]),
        time_zone=str(body.get("timeZone") or "Etc/UTC"),
        target=target,
        retry=retry,
        attempt_deadline=str(body.get("attemptDeadline") or DEFAULT_DEADLINE),
        description=str(body.get("description") or ""),
    )


def check_act_as(cloud: Cloud, request: Request, job: SchedulerJob) -> SchedulerJob:
    """A job whose deliveries carry a service account's token needs its creator to be allowed
    to act as that account (iam.serviceAccounts.actAs)."""
    email = (job.target.get("oauthToken") or {}).get("serviceAccountEmail")
    if email:
        principal = cloud.iam.principal_of(request.headers.get("authorization", ""))
        cloud.iam.require_act_as(principal, str(email), "cloudscheduler.jobs.create")
    return job


def apply_mask(current: dict[str, Any], patch: dict[str, Any], mask: list[str]) -> dict[str, Any]:
    """The job's fields with those the mask names taken from the patch (dotted paths)."""
    out = copy.deepcopy(current)
    for path in mask or list(patch):
        parts = path.split(".")
        src: Any = patch
        for part in parts:
            src = src.get(part) if isinstance(src, dict) else None
        dst = out
        for part in parts[:-1]:
            dst = dst.setdefault(part, {})
        if src is None:
            dst.pop(parts[-1], None)
        else:
            dst[parts[-1]] = copy.deepcopy(src)
    return out


@route("GET", L, "cloudscheduler.projects.locations.get")
async def locations_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = check_location(cloud, m)
    return JSONResponse({"name": name, "locationId": m["location"]})


@route("GET", "/v1/projects/{project}/locations", "cloudscheduler.projects.locations.list")
async def locations_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"projects/{cloud.project}/locations/{cloud.cfg.region}"
    return JSONResponse({"locations": [{"name": name, "locationId": cloud.cfg.region}]})


@route("POST", L + "/jobs", "cloudscheduler.jobs.create", "cloudscheduler.jobs.create")
async def jobs_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    parent = check_location(cloud, m)
    body = await json_body(request)
    short = str(body.get("name", "")).rsplit("/", 1)[-1]
    name = f"{parent}/jobs/{short}"
    if not short:
        raise ApiError(400, "invalid", "Job name is required.")
    if name in cloud.scheduler.jobs:
        raise ApiError(409, "alreadyExists", "Job already exists.")
    job = check_act_as(cloud, request, job_from(name, body))
    return JSONResponse(job_json(cloud.scheduler.put(job)))


@route("GET", L + "/jobs", "cloudscheduler.jobs.list", "cloudscheduler.jobs.list")
async def jobs_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    parent = check_location(cloud, m)
    jobs = [
        job_json(j) for n, j in sorted(cloud.scheduler.jobs.items()) if n.startswith(parent + "/")
    ]
    return JSONResponse({"jobs": jobs} if jobs else {})


@route("GET", J, "cloudscheduler.jobs.get", "cloudscheduler.jobs.get")
async def jobs_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{check_location(cloud, m)}/jobs/{m['job']}"
    return JSONResponse(job_json(cloud.scheduler.job(name)))


@route("PATCH", J, "cloudscheduler.jobs.patch", "cloudscheduler.jobs.update")
async def jobs_patch(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    name = f"{check_location(cloud, m)}/jobs/{m['job']}"
    job = cloud.scheduler.job(name)
    patch = await json_body(request)
    mask = [f for f in request.query_params.get("updateMask", "").split(",") if f]
    merged = apply_mask(job_json(job), patch, mask)
    updated = check_act_as(cloud, request, job_from(name, merged))
    updated.state, updated.last_attempt, updated.status = job.state, job.last_attempt, job.status
    return JSONResponse(job_json(cloud.scheduler.put(updated)))


@route("DELETE", J, "cloudscheduler.jobs.delete", "cloudscheduler.jobs.delete")
async def jobs_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    cloud.scheduler.delete(f"{check_location(cloud, m)}/jobs/{m['job']}")
    return JSONResponse({})


@route("POST", J + ":pause", "cloudscheduler.jobs.pause", "cloudscheduler.jobs.pause")
async def jobs_pause(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    job = cloud.scheduler.job(f"{check_location(cloud, m)}/jobs/{m['job']}")
    job.state = "PAUSED"
    return JSONResponse(job_json(job))


@route("POST", J + ":resume", "cloudscheduler.jobs.resume", "cloudscheduler.jobs.enable")
async def jobs_resume(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    job = cloud.scheduler.job(f"{check_location(cloud, m)}/jobs/{m['job']}")
    job.state = "ENABLED"
    cloud.scheduler.put(job)
    return JSONResponse(job_json(job))


@route("POST", J + ":run", "cloudscheduler.jobs.run", "cloudscheduler.jobs.run")
async def jobs_run(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    job = cloud.scheduler.job(f"{check_location(cloud, m)}/jobs/{m['job']}")
    await cloud.scheduler.run_now(job)
    return JSONResponse(job_json(job))

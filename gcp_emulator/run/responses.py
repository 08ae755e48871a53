"""Cloud Run Admin API v1's HTTP surface for jobs, as gcloud 528 calls it: the Knative-style
`apis/run.googleapis.com/v1/namespaces/NS/{jobs,executions,tasks}` on the regional host
(`REGION-run.googleapis.com`), and the jobs' IAM policy on the global one
(`v1/projects/P/locations/R/jobs/J:getIamPolicy`). gcloud never calls v2 for jobs; Cloud
Scheduler may: v2's `jobs.run` (`v2/projects/P/locations/R/jobs/J:run`, a long-running operation
whose metadata is the execution) and `operations.get` are answered too.

NS is the project's id or number; answers name the project by its number (`metadata.namespace`),
and gcloud follows an execution under that. Conditions always carry a string `status`; an
execution always has a `Completed` condition; every object carries `cloud.googleapis.com/location`;
int64 fields (`timeoutSeconds`) are strings; policy etags are base64 (what gcloud needs, or it
crashes: docs/emulator.md, "Cloud Run jobs")."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud
from gcp_emulator.core.util import now_rfc3339
from gcp_emulator.run.models import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    EnvVar,
    Execution,
    Job,
    JobSpec,
)

route = service_route("run")
V1 = "/apis/run.googleapis.com/v1/namespaces/{namespace}"
IAM = "/v1/projects/{project}/locations/{region}/jobs/{job}"
V2 = "/v2/projects/{project}/locations/{region}"
API_VERSION = "run.googleapis.com/v1"
LOCATION = "cloud.googleapis.com/location"


def region_of(request: Request, cloud: Cloud) -> str:
    """The region a call is for: its regional host's (`asia-northeast3-run.googleapis.com`)."""
    host = request.headers.get("host", "").split(":")[0]
    hit = re.match(r"([a-z]+-[a-z]+\d+)-", host)
    return hit[1] if hit else cloud.cfg.region


def check_namespace(cloud: Cloud, namespace: str) -> None:
    if namespace not in (cloud.project, str(cloud.cfg.project_number)):
        raise ApiError(403, "forbidden", f"Permission denied on resource project {namespace}.")


def checked_spec(cloud: Cloud, request: Request, body: dict[str, Any]) -> JobSpec:
    """The job's template, once the caller may run things as its service account (actAs)."""
    spec = spec_of(body, cloud)
    principal = cloud.iam.principal_of(request.headers.get("authorization", ""))
    cloud.iam.require_act_as(principal, spec.service_account, "run.jobs.create")
    return spec


def job_resource(cloud: Cloud, m: dict[str, str]) -> tuple[str, Any]:
    """A job, for IAM: its name and its own policy (when it exists)."""
    name = m.get("job", "")
    job = next((j for (_, n), j in cloud.run.jobs.items() if n == name), None)
    return f"namespaces/{cloud.project}/jobs/{name}", job.policy if job else None


# -- shapes ----------------------------------------------------------------------------------


def int64(value: Any, default: int) -> int:
    try:
        return int(str(value)) if value not in (None, "") else default
    except ValueError:
        raise ApiError(400, "invalid", f"Invalid value {value!r}: expected an integer.") from None


def spec_of(body: dict[str, Any], cloud: Cloud) -> JobSpec:
    """The job's template from a Job resource's body."""
    template = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    task = (template.get("template") or {}).get("spec") or {}
    containers = task.get("containers") or []
    if len(containers) != 1 or not containers[0].get("image"):
        raise ApiError(
            400,
            "invalid",
            "spec.template.spec.template.spec.containers: one container with an image is required.",
        )
    c = containers[0]
    env = []
    for var in c.get("env") or []:
        ref = ((var.get("valueFrom") or {}).get("secretKeyRef")) or None
        if ref is not None:
            env.append(
                EnvVar(
                    str(var["name"]),
                    secret=str(ref["name"]),
                    version=str(ref.get("key") or "latest"),
                )
            )
        else:
            env.append(EnvVar(str(var["name"]), str(var.get("value", ""))))
    number = cloud.cfg.project_number
    return JobSpec(
        image=str(c["image"]),
        command=[str(x) for x in c.get("command") or []],
        args=[str(x) for x in c.get("args") or []],
        env=env,
        service_account=str(
            task.get("serviceAccountName") or f"{number}-compute@developer.gserviceaccount.com"
        ),
        task_count=int64(template.get("taskCount"), 1),
        parallelism=int64(template.get("parallelism"), 0),
        max_retries=int64(task.get("maxRetries"), DEFAULT_RETRIES),
        timeout_seconds=int64(task.get("timeoutSeconds"), DEFAULT_TIMEOUT),
    )


def template_json(spec: JobSpec) -> dict[str, Any]:
    """The task template as Cloud Run answers it (server defaults filled in)."""
    env = []
    for var in spec.env:
        if var.secret is not None:
            env.append(
                {
                    "name": var.name,
                    "valueFrom": {"secretKeyRef": {"name": var.secret, "key": var.version}},
                }
            )
        else:
            env.append({"name": var.name, "value": var.value or ""})
    container: dict[str, Any] = {
        "image": spec.image,
        "resources": {"limits": {"cpu": spec.cpu, "memory": spec.memory}},
    }
    if spec.command:
        container["command"] = spec.command
    if spec.args:
        container["args"] = spec.args
    if env:
        container["env"] = env
    return {
        "containers": [container],
        "maxRetries": spec.max_retries,
        "timeoutSeconds": str(spec.timeout_seconds),
        "serviceAccountName": spec.service_account,
    }


def meta(
    cloud: Cloud,
    kind: str,
    name: str,
    region: str,
    uid: str,
    created: str,
    generation: int,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    number = str(cloud.cfg.project_number)
    return {
        "name": name,
        "namespace": number,
        "selfLink": f"/apis/{API_VERSION}/namespaces/{number}/{kind}/{name}",
        "uid": uid,
        "resourceVersion": f"AAY{generation:010d}",
        "generation": generation,
        "creationTimestamp": created,
        "labels": {**labels, LOCATION: region},
        "annotations": annotations,
    }


def condition(
    kind: str, status: str, when: str, reason: str = "", message: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": when}
    if reason:
        body["reason"] = reason
    if message:
        body["message"] = message
    return body


def job_json(cloud: Cloud, job: Job) -> dict[str, Any]:
    annotations = {
        "run.googleapis.com/client-name": "gcloud",
        **job.annotations,
        "run.googleapis.com/creator": "operator@example.com",
        "run.googleapis.com/lastModifier": "operator@example.com",
        "run.googleapis.com/operation-id": job.uid[:8],
    }
    template_meta = (job.body.get("spec") or {}).get("template", {}).get("metadata") or {}
    status: dict[str, Any] = {
        "observedGeneration": job.generation,
        "conditions": [condition("Ready", "True", job.updated)],
        "executionCount": job.execution_count,
    }
    latest = cloud.run.executions.get((job.region, job.latest_execution))
    if latest is not None:
        last: dict[str, Any] = {"name": latest.name, "creationTimestamp": latest.created}
        if latest.completed:
            last["completionTimestamp"] = latest.completed
            last["completionStatus"] = {
                "succeeded": "EXECUTION_SUCCEEDED",
                "failed": "EXECUTION_FAILED",
                "cancelled": "EXECUTION_CANCELLED",
            }[latest.result or "failed"]
        status["latestCreatedExecution"] = last
    spec = job.spec
    template: dict[str, Any] = {
        "taskCount": spec.task_count,
        "template": {"spec": template_json(spec)},
    }
    if spec.parallelism:
        template["parallelism"] = spec.parallelism
    return {
        "apiVersion": API_VERSION,
        "kind": "Job",
        "metadata": meta(
            cloud,
            "jobs",
            job.name,
            job.region,
            job.uid,
            job.created,
            job.generation,
            job.labels,
            annotations,
        ),
        "spec": {"template": {"metadata": template_meta, "spec": template}},
        "status": status,
    }


def execution_json(cloud: Cloud, e: Execution) -> dict[str, Any]:
    counts = e.counts()
    now = now_rfc3339()
    started = e.started or e.created
    conditions = [condition("ResourcesAvailable", "True", started)]
    ran = any(e.attempts.values())
    conditions.append(condition("Started", "True" if ran or e.completed else "Unknown", started))
    result = e.result
    if result is None:
        conditions.append(
            condition(
                "Completed",
                "Unknown",
                started,
                "Running",
                f"{counts['running']} running, {counts['succeeded']} succeeded",
            )
        )
    elif result == "succeeded":
        conditions.append(
            condition(
                "Completed", "True", e.completed or now, "", "Execution completed successfully."
            )
        )
    elif result == "cancelled":
        conditions.append(
            condition(
                "Completed",
                "False",
                e.completed or now,
                "Cancelled",
                "The execution was cancelled.",
            )
        )
    else:
        failed = [i for i in range(e.spec.task_count) if e.task_outcome(i) == "failed"]
        why = e.attempts[failed[0]][-1].why if failed and e.attempts.get(failed[0]) else ""
        task = f"{e.name}-{failed[0]}" if failed else e.name
        conditions.append(
            condition(
                "Completed",
                "False",
                e.completed or now,
                "NonZeroExitCode",
                f"Task {task} failed with message: {why}",
            )
        )
    if counts["retried"]:
        conditions.append(
            condition(
                "Retry",
                "True",
                now,
                "ImmediateRetry",
                f"System will retry after 0:00:00 from lastTransitionTime "
                f"for attempt {counts['retried']}.",
            )
        )
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "conditions": conditions,
        "startTime": started,
        "runningCount": counts["running"],
        "succeededCount": counts["succeeded"],
        "failedCount": counts["failed"],
        "cancelledCount": counts["cancelled"],
        "retriedCount": counts["retried"],
        "logUri": f"https://console.cloud.google.com/logs/viewer?project={cloud.project}"
        f"&advancedFilter=resource.type%3D%22cloud_run_job%22%0Alabels.%22run.googleapis.com"
        f"/execution_name%22%3D%22{e.name}%22",
    }
    if e.completed:
        status["completionTime"] = e.completed
    labels = {
        "run.googleapis.com/job": e.job,
        "run.googleapis.com/jobGeneration": str(e.generation),
    }
    template: dict[str, Any] = {"spec": template_json(e.spec)}
    spec: dict[str, Any] = {"taskCount": e.spec.task_count, "template": template}
    if e.spec.parallelism:
        spec["parallelism"] = e.spec.parallelism
    body = {
        "apiVersion": API_VERSION,
        "kind": "Execution",
        "metadata": meta(
            cloud,
            "executions",
            e.name,
            e.region,
            e.uid,
            e.created,
            1,
            labels,
            {"run.googleapis.com/creator": e.creator},
        ),
        "spec": spec,
        "status": status,
    }
    body["metadata"]["ownerReferences"] = [
        {"kind": "Job", "name": e.job, "apiVersion": API_VERSION, "controller": True}
    ]
    return body


RUNNING_STATE = {
    "pending": "Pending",
    "running": "Running",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Cancelled",
}


def task_json(cloud: Cloud, e: Execution, index: int) -> dict[str, Any]:
    attempts = e.attempts.get(index, [])
    outcome = e.task_outcome(index)
    name = f"{e.name}-{index}"
    labels = {
        "run.googleapis.com/job": e.job,
        "run.googleapis.com/execution": e.name,
        "run.googleapis.com/index": str(index),
        "run.googleapis.com/runningState": RUNNING_STATE[outcome],
    }
    status: dict[str, Any] = {
        "index": index,
        "retried": max(0, len(attempts) - 1),
        "observedGeneration": 1,
    }
    kind = (
        "Unknown"
        if outcome in ("pending", "running")
        else ("True" if outcome == "succeeded" else "False")
    )
    status["conditions"] = [
        condition(
            "Completed",
            kind,
            attempts[-1].finished if attempts and attempts[-1].finished else e.created,
        )
    ]
    if attempts:
        last = attempts[-1]
        status["startTime"] = last.started
        if last.finished:
            status["completionTime"] = last.finished
            result: dict[str, Any] = {
                "exitCode": last.exit_code if last.exit_code is not None else -1
            }
            if last.outcome != "succeeded":
                result["status"] = {"code": 2, "message": last.why}
            status["lastAttemptResult"] = result
    return {
        "apiVersion": API_VERSION,
        "kind": "Task",
        "metadata": meta(
            cloud, "tasks", name, e.region, f"{e.uid[:24]}{index:08d}", e.created, 1, labels, {}
        ),
        "spec": template_json(e.spec),
        "status": status,
    }


def selector(text: str) -> dict[str, set[str]]:
    """A labelSelector (`a = b, c in (d,e)`) as label -> allowed values."""
    out: dict[str, set[str]] = {}
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        part = part.strip()
        if not part:
            continue
        hit = re.fullmatch(r"([\w./-]+)\s*(=|==|in)\s*\(?([^)]*)\)?", part)
        if hit is None:
            raise ApiError(400, "invalid", f"Invalid labelSelector: {text!r}")
        out[hit[1]] = {v.strip() for v in hit[3].split(",") if v.strip()}
    return out


def selected(labels: dict[str, str], wanted: dict[str, set[str]]) -> bool:
    return all(labels.get(k) in vs for k, vs in wanted.items())


def listing(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {}, "items": items}


# -- jobs ------------------------------------------------------------------------------------


@route("POST", V1 + "/jobs", "run.jobs.create", "run.jobs.create")
async def jobs_create(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    body = await json_body(request)
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name") or "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ApiError(400, "invalid", f"metadata.name: {name!r} is not a valid job name.")
    job = cloud.run.create_job(
        region_of(request, cloud),
        name,
        checked_spec(cloud, request, body),
        dict(metadata.get("labels") or {}),
        dict(metadata.get("annotations") or {}),
    )
    job.body = body
    return JSONResponse(job_json(cloud, job))


@route("GET", V1 + "/jobs", "run.jobs.list", "run.jobs.list")
async def jobs_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    host_region = re.match(r"([a-z]+-[a-z]+\d+)-", request.headers.get("host", ""))
    jobs = [
        job_json(cloud, j)
        for (region, _), j in sorted(cloud.run.jobs.items())
        if host_region is None or region == host_region[1]
    ]
    return JSONResponse(listing("JobsList", jobs))


@route("GET", V1 + "/jobs/{job}", "run.jobs.get", "run.jobs.get", job_resource)
async def jobs_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    return JSONResponse(job_json(cloud, cloud.run.job(region_of(request, cloud), m["job"])))


@route("PUT", V1 + "/jobs/{job}", "run.jobs.replaceJob", "run.jobs.update", job_resource)
async def jobs_replace(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    body = await json_body(request)
    metadata = body.get("metadata") or {}
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k != LOCATION}
    job = cloud.run.replace_job(
        region_of(request, cloud),
        m["job"],
        checked_spec(cloud, request, body),
        labels,
        dict(metadata.get("annotations") or {}),
    )
    job.body = body
    return JSONResponse(job_json(cloud, job))


@route("DELETE", V1 + "/jobs/{job}", "run.jobs.delete", "run.jobs.delete", job_resource)
async def jobs_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    job = cloud.run.delete_job(region_of(request, cloud), m["job"])
    return JSONResponse(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Success",
            "details": {"name": job.name, "kind": "jobs", "uid": job.uid},
        }
    )


def caller(cloud: Cloud, request: Request) -> str:
    """The e-mail of who called: an execution's creator."""
    return cloud.iam.principal_of(request.headers.get("authorization", "")).split(":", 1)[1]


@route("POST", V1 + "/jobs/{job}:run", "run.jobs.run", "run.jobs.run", job_resource)
async def jobs_run(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    body = await json_body(request)
    overrides = body.get("overrides") or None
    if overrides:  # running with overrides needs more than run.jobs.run
        principal = cloud.iam.principal_of(request.headers.get("authorization", ""))
        cloud.iam.require(
            principal, "run.jobs.runWithOverrides", job_resource(cloud, m), "run.jobs.run"
        )
    execution = cloud.run.run(region_of(request, cloud), m["job"], overrides)
    execution.creator = caller(cloud, request)
    return JSONResponse(execution_json(cloud, execution))


# -- executions and tasks ----------------------------------------------------------------------


@route("GET", V1 + "/executions", "run.executions.list", "run.executions.list")
async def executions_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    wanted = selector(request.query_params.get("labelSelector", ""))
    items = []
    for e in sorted(cloud.run.executions.values(), key=lambda x: x.created, reverse=True):
        body = execution_json(cloud, e)
        if selected(body["metadata"]["labels"], wanted):
            items.append(body)
    return JSONResponse(listing("ExecutionsList", items))


@route("GET", V1 + "/executions/{execution}", "run.executions.get", "run.executions.get")
async def executions_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    e = cloud.run.execution(region_of(request, cloud), m["execution"])
    return JSONResponse(execution_json(cloud, e))


@route(
    "POST", V1 + "/executions/{execution}:cancel", "run.executions.cancel", "run.executions.cancel"
)
async def executions_cancel(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    e = cloud.run.cancel(cloud.run.execution(region_of(request, cloud), m["execution"]))
    return JSONResponse(execution_json(cloud, e))


@route("DELETE", V1 + "/executions/{execution}", "run.executions.delete", "run.executions.delete")
async def executions_delete(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    e = cloud.run.delete_execution(cloud.run.execution(region_of(request, cloud), m["execution"]))
    return JSONResponse(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Success",
            "details": {"name": e.name, "kind": "executions"},
        }
    )


@route("GET", V1 + "/tasks", "run.tasks.list", "run.tasks.list")
async def tasks_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    wanted = selector(request.query_params.get("labelSelector", ""))
    items = []
    for e in cloud.run.executions.values():
        for index in range(e.spec.task_count):
            body = task_json(cloud, e, index)
            if selected(body["metadata"]["labels"], wanted):
                items.append(body)
    return JSONResponse(listing("TasksList", items))


@route("GET", V1 + "/tasks/{task}", "run.tasks.get", "run.tasks.get")
async def tasks_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["namespace"])
    name, _, index = m["task"].rpartition("-")
    e = cloud.run.executions.get((region_of(request, cloud), name))
    if e is None or not index.isdigit() or int(index) >= e.spec.task_count:
        raise ApiError(404, "notFound", f"Resource '{m['task']}' of kind 'TASK' does not exist.")
    return JSONResponse(task_json(cloud, e, int(index)))


# -- the jobs' IAM policies ------------------------------------------------------------------


@route("GET", IAM + ":getIamPolicy", "run.jobs.getIamPolicy", "run.jobs.getIamPolicy", job_resource)
async def jobs_get_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.run.job(m["region"], m["job"]).policy.json())


@route(
    "POST", IAM + ":setIamPolicy", "run.jobs.setIamPolicy", "run.jobs.setIamPolicy", job_resource
)
async def jobs_set_policy(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    job = cloud.run.job(m["region"], m["job"])
    body = await json_body(request)
    return JSONResponse(job.policy.set(body.get("policy") or {}).json())


# -- v2: what a scheduler job in v2's form calls -----------------------------------------------


def execution_v2(cloud: Cloud, e: Execution) -> dict[str, Any]:
    """An execution in v2's shape (google.cloud.run.v2.Execution), its main fields."""
    parent = f"projects/{cloud.project}/locations/{e.region}"
    counts = e.counts()
    body: dict[str, Any] = {
        "@type": "type.googleapis.com/google.cloud.run.v2.Execution",
        "name": f"{parent}/jobs/{e.job}/executions/{e.name}",
        "uid": e.uid,
        "job": e.job,
        "createTime": e.created,
        "launchStage": "GA",
        "taskCount": e.spec.task_count,
        "parallelism": e.spec.parallelism,
        "runningCount": counts["running"],
        "succeededCount": counts["succeeded"],
        "failedCount": counts["failed"],
        "cancelledCount": counts["cancelled"],
        "retriedCount": counts["retried"],
        "reconciling": e.completed is None,
    }
    if e.started:
        body["startTime"] = e.started
    if e.completed:
        body["completionTime"] = e.completed
    return body


def operation_v2(cloud: Cloud, e: Execution) -> dict[str, Any]:
    op: dict[str, Any] = {
        "name": f"projects/{cloud.project}/locations/{e.region}/operations/{e.uid}",
        "metadata": execution_v2(cloud, e),
        "done": e.completed is not None,
    }
    if e.completed is not None:
        if e.result == "succeeded":
            op["response"] = execution_v2(cloud, e)
        else:
            op["error"] = {
                "code": 2 if e.result == "failed" else 1,
                "message": f"Execution {e.name} {e.result}.",
            }
    return op


@route(
    "POST", V2 + "/jobs/{job}:run", "run.projects.locations.jobs.run", "run.jobs.run", job_resource
)
async def jobs_run_v2(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["project"])
    body = await json_body(request)
    overrides = body.get("overrides") or None
    if overrides:
        principal = cloud.iam.principal_of(request.headers.get("authorization", ""))
        cloud.iam.require(
            principal, "run.jobs.runWithOverrides", job_resource(cloud, m), "run.jobs.run"
        )
    if body.get("validateOnly"):
        cloud.run.job(m["region"], m["job"])
        return JSONResponse({"name": "", "done": True})
    # v2's overrides have v1's names: containerOverrides (args, env, clearArgs), taskCount, timeout
    execution = cloud.run.run(m["region"], m["job"], overrides)
    execution.creator = caller(cloud, request)
    return JSONResponse(operation_v2(cloud, execution))


@route(
    "GET",
    V2 + "/operations/{operation}",
    "run.projects.locations.operations.get",
    "run.operations.get",
)
async def operations_get_v2(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    check_namespace(cloud, m["project"])
    for e in cloud.run.executions.values():
        if e.uid == m["operation"] and e.region == m["region"]:
            return JSONResponse(operation_v2(cloud, e))
    raise ApiError(404, "notFound", f"Operation {m['operation']} not found.")

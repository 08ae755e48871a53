"""Cloud Run jobs' state and behaviour: jobs, their executions, and each execution's tasks, run
as Cloud Run runs them (docs/google-cloud.md, "Cloud Run jobs and Cloud Scheduler").

An execution runs its job's image (cloudbuild/dockerfile.py) as tasks on this machine, each in a
container of its own (guests/container.py) in the emulator's private network: the image's
ENTRYPOINT and CMD (or the job's command and args), its USER and WORKDIR, the job's environment
with its secrets resolved from Secret Manager when the execution starts, and CLOUD_RUN_JOB,
CLOUD_RUN_EXECUTION, CLOUD_RUN_TASK_INDEX, CLOUD_RUN_TASK_ATTEMPT and CLOUD_RUN_TASK_COUNT. Tasks
run `parallelism` at a time; a failed attempt is run again, as the same task index with the next
attempt number, up to `maxRetries` times; an attempt past `timeoutSeconds` gets SIGTERM, SIGKILL
10 s later, and is a failed attempt; a cancel does the same to every running attempt. Each line
a task prints becomes a log entry of the execution, as Cloud Logging takes it; each execution that
ends adds a point to `run.googleapis.com/job/completed_execution_count` with its `result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import now_rfc3339
from gcp_emulator.guests import container
from gcp_emulator.iam.models import Policy
from gcp_emulator.metadata.tree import task_tree

if TYPE_CHECKING:
    from gcp_emulator.cloudbuild.dockerfile import Image
    from gcp_emulator.core.state import Cloud

logger = logging.getLogger(__name__)
KILL_AFTER = 10.0  # seconds from SIGTERM to SIGKILL (the container contract)
DEFAULT_TIMEOUT = 600
DEFAULT_RETRIES = 3
LINE_MAX = 256 * 1024  # the longest log line kept whole: Cloud Logging's entry size limit
MARKER = "GCP_EMULATOR_TASK"  # in every task process's environment: finds them all


@dataclass
class EnvVar:
    name: str
    value: str | None = None
    secret: str | None = None  # Secret Manager secret name
    version: str = "latest"


@dataclass
class JobSpec:
    """What the job runs: its template (one container)."""

    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: list[EnvVar] = field(default_factory=list)
    service_account: str = ""
    task_count: int = 1
    parallelism: int = 0  # 0: as many as tasks
    max_retries: int = DEFAULT_RETRIES
    timeout_seconds: int = DEFAULT_TIMEOUT
    cpu: str = "1000m"
    memory: str = "512Mi"


@dataclass
class Job:
    name: str
    region: str
    spec: JobSpec
    uid: str = field(default_factory=lambda: secrets.token_hex(16))
    created: str = field(default_factory=now_rfc3339)
    updated: str = field(default_factory=now_rfc3339)
    generation: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    execution_count: int = 0
    latest_execution: str = ""
    policy: Policy = field(default_factory=Policy)
    body: dict[str, Any] = field(default_factory=dict)  # the spec as the client gave it


@dataclass
class Attempt:
    index: int
    attempt: int
    started: str = field(default_factory=now_rfc3339)
    finished: str | None = None
    exit_code: int | None = None
    outcome: str = "running"  # running, succeeded, failed, cancelled
    why: str = ""  # a failure's reason as Cloud Run words it
    proc: asyncio.subprocess.Process | None = None
    marker: str = field(default_factory=lambda: secrets.token_hex(8))  # its instance id
    # its metadata server's path: known to the task alone (the marker is in its log entries)
    metadata_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    execution: str = ""  # its execution's name


@dataclass
class Execution:
    name: str
    job: str
    region: str
    spec: JobSpec
    env: dict[str, str]  # the job's environment with its secrets, resolved at the start
    image: Image
    generation: int
    uid: str = field(default_factory=lambda: secrets.token_hex(16))
    created: str = field(default_factory=now_rfc3339)
    started: str | None = None
    completed: str | None = None
    cancelled: bool = False
    # who called run (its creator annotation; `RUN BY` in `executions list`): the operator, or
    # the scheduler's service account for a scheduled execution
    creator: str = "operator@example.com"
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def task_outcome(self, index: int) -> str:
        """pending, running, succeeded, failed or cancelled: the task's, from its attempts."""
        attempts = self.attempts.get(index)
        if not attempts:
            return "cancelled" if self.cancelled and self.completed else "pending"
        last = attempts[-1]
        return last.outcome

    def counts(self) -> dict[str, int]:
        out = {"running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "retried": 0}
        for index in range(self.spec.task_count):
            outcome = self.task_outcome(index)
            if outcome in out:
                out[outcome] += 1
            out["retried"] += max(0, len(self.attempts.get(index, [])) - 1)
        return out

    @property
    def result(self) -> str | None:
        """succeeded, failed or cancelled once it has ended (the metric's `result` label)."""
        if self.completed is None:
            return None
        if self.cancelled:
            return "cancelled"
        return "succeeded" if self.counts()["succeeded"] == self.spec.task_count else "failed"


def execution_name(job: str) -> str:
    """Cloud Run's form: the job's name, a dash and five random characters."""
    alphabet = string.ascii_lowercase + string.digits
    return f"{job}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


class Run:
    """Cloud Run jobs' backend: one method per API call, and the tasks they run."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.jobs: dict[tuple[str, str], Job] = {}  # (region, name)
        self.executions: dict[tuple[str, str], Execution] = {}  # (region, name)
        self.task_keys: dict[str, tuple[Execution, Attempt]] = {}  # metadata path -> attempt

    @property
    def project(self) -> str:
        return self.cloud.project

    # -- jobs --------------------------------------------------------------------------------

    def job(self, region: str, name: str) -> Job:
        job = self.jobs.get((region, name))
        if job is None:
            raise ApiError(
                404,
                "notFound",
                f"Resource '{name}' of kind 'JOB' in region '{region}' in "
                f"project '{self.project}' does not exist.",
            )
        return job

    def create_job(
        self,
        region: str,
        name: str,
        spec: JobSpec,
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> Job:
        if (region, name) in self.jobs:
            raise ApiError(409, "alreadyExists", f"Resource '{name}' already exists.")
        self.check_image(spec.image)
        job = Job(name, region, spec, labels=labels, annotations=annotations)
        self.jobs[(region, name)] = job
        self.cloud.record("event", event="run.job", job=name, change="created")
        return job

    def replace_job(
        self,
        region: str,
        name: str,
        spec: JobSpec,
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> Job:
        job = self.job(region, name)
        self.check_image(spec.image)
        job.spec, job.labels, job.annotations = spec, labels, annotations
        job.generation += 1
        job.updated = now_rfc3339()
        self.cloud.record("event", event="run.job", job=name, change="updated")
        return job

    def delete_job(self, region: str, name: str) -> Job:
        job = self.job(region, name)
        for execution in self.executions.values():
            if execution.job == name and execution.region == region and not execution.done.is_set():
                self.cancel(execution)
        del self.jobs[(region, name)]
        self.cloud.record("event", event="run.job", job=name, change="deleted")
        return job

    def check_image(self, image: str) -> None:
        """The image must be in the emulator's Artifact Registry (built by its Cloud Build)."""
        if self.cloud.images.find(image) is None:
            raise ApiError(400, "invalid", f"Image '{image}' not found.")

    # -- executions --------------------------------------------------------------------------

    def execution(self, region: str, name: str) -> Execution:
        execution = self.executions.get((region, name))
        if execution is None:
            raise ApiError(
                404,
                "notFound",
                f"Resource '{name}' of kind 'EXECUTION' in region '{region}' in "
                f"project '{self.project}' does not exist.",
            )
        return execution

    def run(self, region: str, name: str, overrides: dict[str, Any] | None = None) -> Execution:
        """jobs.run: a new execution, its tasks started at once (no request ID: every call is
        a new execution)."""
        job = self.job(region, name)
        spec = self.overridden(job.spec, overrides or {})
        image = self.cloud.images.find(spec.image)
        if image is None:
            raise ApiError(400, "invalid", f"Image '{spec.image}' not found.")
        env = self.resolve_env(spec)
        execution = Execution(
            execution_name(job.name), job.name, region, spec, env, image, job.generation
        )
        job.execution_count += 1
        job.latest_execution = execution.name
        self.executions[(region, execution.name)] = execution
        self.cloud.record("event", event="run.execution", execution=execution.name, state="created")
        execution.task = asyncio.get_running_loop().create_task(self._execute(execution))
        return execution

    def overridden(self, spec: JobSpec, overrides: dict[str, Any]) -> JobSpec:
        """The job's spec with an execution's overrides (containerOverrides' args and env,
        taskCount, timeout) applied."""
        out = JobSpec(**{**spec.__dict__, "env": list(spec.env), "args": list(spec.args)})
        for co in overrides.get("containerOverrides") or []:
            if co.get("clearArgs"):
                out.args = []
            if co.get("args"):
                out.args = [str(a) for a in co["args"]]
            for var in co.get("env") or []:
                out.env = [e for e in out.env if e.name != var.get("name")]
                out.env.append(EnvVar(str(var.get("name")), str(var.get("value", ""))))
        try:
            if overrides.get("taskCount"):
                out.task_count = int(overrides["taskCount"])
            timeout = overrides.get("timeout") or overrides.get("timeoutSeconds")
            if timeout:
                out.timeout_seconds = round(float(str(timeout).removesuffix("s")))
        except ValueError:
            raise ApiError(
                400, "invalid", f"Invalid overrides: taskCount or timeout: {overrides!r}"
            ) from None
        if out.task_count < 1 or out.timeout_seconds < 1:
            raise ApiError(400, "invalid", "Invalid overrides: taskCount and timeout must be >= 1.")
        return out

    def resolve_env(self, spec: JobSpec) -> dict[str, str]:
        """The job's environment, its secrets read from Secret Manager now, as the job's
        service account (an execution whose account may not read one fails to start)."""
        env = {}
        for var in spec.env:
            if var.secret is None:
                env[var.name] = var.value or ""
                continue
            principal = self.cloud.iam.principal_for_account(spec.service_account)
            self.cloud.iam.require(
                principal,
                "secretmanager.versions.access",
                self.cloud.secretmanager.resource(var.secret),
            )
            env[var.name] = self.cloud.secretmanager.access(var.secret, var.version).decode()
        return env

    def cancel(self, execution: Execution) -> Execution:
        """executions.cancel: SIGTERM to every running attempt, SIGKILL 10 s later; tasks not
        started never start."""
        if execution.done.is_set():
            return execution
        execution.cancelled = True
        for attempts in execution.attempts.values():
            for attempt in attempts:
                if attempt.outcome == "running":
                    asyncio.get_running_loop().create_task(self._stop(attempt, "cancelled"))
        self.cloud.record(
            "event", event="run.execution", execution=execution.name, state="cancelling"
        )
        return execution

    def delete_execution(self, execution: Execution) -> Execution:
        if not execution.done.is_set():
            raise ApiError(
                400, "failedPrecondition", "Execution is still running; cancel it first."
            )
        del self.executions[(execution.region, execution.name)]
        return execution

    # -- running the tasks -------------------------------------------------------------------

    async def _execute(self, execution: Execution) -> None:
        spec = execution.spec
        execution.started = now_rfc3339()
        slots = asyncio.Semaphore(spec.parallelism or spec.task_count)
        try:
            await asyncio.gather(
                *(self._task(execution, index, slots) for index in range(spec.task_count))
            )
        finally:
            execution.completed = now_rfc3339()
            execution.done.set()
            result = execution.result or "failed"
            self.cloud.monitoring.add_point(
                "run.googleapis.com/job/completed_execution_count",
                {"result": result},
                {
                    "job_name": execution.job,
                    "location": execution.region,
                    "project_id": self.project,
                },
                resource_type="cloud_run_job",
            )
            self.cloud.record(
                "event", event="run.execution", execution=execution.name, state=result
            )

    async def _task(self, execution: Execution, index: int, slots: asyncio.Semaphore) -> None:
        async with slots:
            for attempt_no in range(execution.spec.max_retries + 1):
                if execution.cancelled:
                    return
                attempt = Attempt(index, attempt_no, execution=execution.name)
                execution.attempts.setdefault(index, []).append(attempt)
                await self._attempt(execution, attempt)
                if attempt.outcome != "failed" or execution.cancelled:
                    return

    async def _attempt(self, execution: Execution, attempt: Attempt) -> None:
        spec, image = execution.spec, execution.image
        task_dir = (
            self.cloud.state_root
            / "run"
            / "tasks"
            / (f"{execution.name}-{attempt.index}-{attempt.attempt}")
        )
        (task_dir / "root").mkdir(parents=True, exist_ok=True)
        command = (spec.command or image.entrypoint) + (
            spec.args or ([] if spec.command else image.cmd)
        )
        if not command:
            attempt.outcome, attempt.why = "failed", "the image has no ENTRYPOINT or CMD"
            attempt.finished = now_rfc3339()
            return
        env = self.task_env(execution, attempt)
        argv = self.cloud.command(
            container.argv(task_dir / "root", image.root, image.user, image.workdir, command)
        )
        self.cloud.record(
            "event",
            event="run.task",
            execution=execution.name,
            index=attempt.index,
            attempt=attempt.attempt,
            state="started",
        )
        try:
            attempt.proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            attempt.outcome, attempt.why = "failed", f"the container could not start: {exc}"
            attempt.finished = now_rfc3339()
            self.task_keys = {k: v for k, v in self.task_keys.items() if v[1] is not attempt}
            return
        if execution.cancelled:  # cancelled while its container was starting
            asyncio.get_running_loop().create_task(self._stop(attempt, "cancelled"))
        pumps = asyncio.gather(
            self._pump(execution, attempt, attempt.proc.stdout, "stdout"),
            self._pump(execution, attempt, attempt.proc.stderr, "stderr"),
        )
        timer = asyncio.get_running_loop().call_later(
            spec.timeout_seconds,
            lambda: asyncio.get_running_loop().create_task(self._stop(attempt, "timeout")),
        )
        try:
            rc = await attempt.proc.wait()
            timer.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pumps, 5)
        finally:  # the attempt's processes go with it, and its metadata server's path
            timer.cancel()
            self._kill_rest(attempt)
            self.task_keys = {k: v for k, v in self.task_keys.items() if v[1] is not attempt}
        attempt.exit_code = rc
        attempt.finished = now_rfc3339()
        if attempt.outcome == "running":
            attempt.outcome = "succeeded" if rc == 0 else "failed"
            if rc != 0:
                how = f"exit code {rc}" if rc > 0 else f"signal {signal.Signals(-rc).name}"
                attempt.why = f"The container exited with an error ({how})."
        self.cloud.record(
            "event",
            event="run.task",
            execution=execution.name,
            index=attempt.index,
            attempt=attempt.attempt,
            state=attempt.outcome,
            exit_code=rc,
        )

    def task_env(self, execution: Execution, attempt: Attempt) -> dict[str, str]:
        """What a task's container starts with: the image's environment, the job's (its secrets
        resolved), Cloud Run's own variables, and how it reaches its metadata server."""
        image = execution.image
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": container.home_of(image.user),
            **image.env,
            **execution.env,
            "CLOUD_RUN_JOB": execution.job,
            "CLOUD_RUN_EXECUTION": execution.name,
            "CLOUD_RUN_TASK_INDEX": str(attempt.index),
            "CLOUD_RUN_TASK_ATTEMPT": str(attempt.attempt),
            "CLOUD_RUN_TASK_COUNT": str(execution.spec.task_count),
            MARKER: attempt.marker,
            **clock.env(),
        }
        # its metadata server (where gcloud finds its account and token): 169.254.169.254 in
        # the private network, with a path of this attempt's (a task on Cloud Run reaches its
        # own; here every task reaches one address: the path tells them apart)
        key = f"{execution.name}.{attempt.index}.{attempt.attempt}.{attempt.metadata_key}"
        self.task_keys[key] = (execution, attempt)
        host = "169.254.169.254" if self.cloud.net is not None else self.cloud.base_url[7:]
        env["GCE_METADATA_ROOT"] = env["GCE_METADATA_HOST"] = f"{host}/run-task/{key}"
        if self.cloud.net is not None:  # the CA the private network trusts, for gcloud
            env["CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE"] = "/etc/ssl/certs/ca-certificates.crt"
        return env

    def task_metadata(self, key: str) -> dict[str, Any] | None:
        """What a task's metadata server says of it (metadata/tree.py's task_tree)."""
        found = self.task_keys.get(key)
        if found is None:
            return None
        execution, attempt = found
        return task_tree(
            self.cloud, execution.region, attempt.marker, execution.spec.service_account
        )

    async def _pump(self, execution: Execution, attempt: Attempt, stream: Any, name: str) -> None:
        """Each line of a task's stream into its log; a line longer than LINE_MAX is cut into
        entries of that size (Cloud Logging takes entries up to 256 KB)."""
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            while len(pending) > LINE_MAX:
                lines.append(pending[:LINE_MAX])
                pending = pending[LINE_MAX:]
            for raw in lines:
                self.cloud.logging.task_line(
                    execution, attempt, name, raw.decode("utf-8", "replace")
                )
        if pending:
            self.cloud.logging.task_line(
                execution, attempt, name, pending.decode("utf-8", "replace")
            )

    async def _stop(self, attempt: Attempt, why: str) -> None:
        """SIGTERM to the attempt's main process, SIGKILL to all of it 10 s later."""
        proc = attempt.proc
        if proc is None or proc.returncode is not None or attempt.outcome != "running":
            return
        attempt.outcome = "cancelled" if why == "cancelled" else "failed"
        if why == "timeout":
            attempt.why = "The configured timeout was reached."
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        self._signalled(attempt, "SIGTERM", why)
        try:
            await asyncio.wait_for(proc.wait(), KILL_AFTER)
        except TimeoutError:
            self._kill_rest(attempt)
            self._signalled(attempt, "SIGKILL", why)

    def _signalled(self, attempt: Attempt, sig: str, why: str) -> None:
        self.cloud.record(
            "event",
            event="run.signal",
            execution=attempt.execution,
            index=attempt.index,
            attempt=attempt.attempt,
            signal=sig,
            why=why,
        )

    def kill(self, name: str) -> int:
        """A test's hook: SIGKILL every running attempt of the execution NAME at once, as a
        crashed instance would end it (no SIGTERM first); Cloud Run retries it as a failed
        attempt. How many attempts were killed."""
        execution = next((e for e in self.executions.values() if e.name == name), None)
        if execution is None:
            raise ApiError(404, "notFound", f"no execution {name!r}")
        killed = 0
        for attempts in execution.attempts.values():
            for attempt in attempts:
                if attempt.outcome == "running" and attempt.proc is not None:
                    self._signalled(attempt, "SIGKILL", "killed")
                    self._kill_rest(attempt)
                    killed += 1
        return killed

    def _kill_rest(self, attempt: Attempt) -> None:
        """SIGKILL to every process of the attempt (the container is gone with its main one)."""
        if attempt.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(attempt.proc.pid, signal.SIGKILL)
        needle = f"{MARKER}={attempt.marker}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue

    async def close(self) -> None:
        """The emulator is exiting: no attempt is retried or started any more, every process
        of every running one is killed, and the executions' tasks are awaited."""
        running = [e for e in self.executions.values() if not e.done.is_set()]
        for execution in running:
            execution.cancelled = True
            for attempts in execution.attempts.values():
                for attempt in attempts:
                    self._kill_rest(attempt)
        tasks = [e.task for e in running if e.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()

    def state_json(self) -> dict[str, Any]:
        return {
            "run": {
                "jobs": sorted(name for _, name in self.jobs),
                "executions": [
                    {
                        "name": e.name,
                        "job": e.job,
                        "done": e.done.is_set(),
                        "result": e.result,
                        "created": e.created,
                        "completed": e.completed,
                        "attempts": [
                            {
                                "index": a.index,
                                "attempt": a.attempt,
                                "outcome": a.outcome,
                                "exit_code": a.exit_code,
                            }
                            for attempts in e.attempts.values()
                            for a in attempts
                        ],
                    }
                    for e in self.executions.values()
                ],
            }
        }

"""The chain our users deploy, on the emulator in its private network: a Cloud Scheduler job
calls the Cloud Run job's `:run`, Cloud Run runs the image built from this repository's
Dockerfile as the job's service account, and its entrypoint.sh drives the VM. Everything is set
up as docs/deploy.md sets it up, with the real gcloud and no endpoint override."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from tests.flow import PROJECT, REGION, ZONE, Flow
from tests.harness import REPO, TOKEN, EmulatorProcess

JOB = "vm-job-runner"
SCHEDULER_JOB = f"{JOB}-slots"
SCHEDULE = "*/5 * * * *"
TIME_ZONE = "Asia/Seoul"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/jobs/{JOB}:test"
RUN_URI = (
    f"https://{REGION}-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/{PROJECT}"
    f"/jobs/{JOB}:run"
)


def sa(name: str) -> str:
    return f"{name}@{PROJECT}.iam.gserviceaccount.com"


def documented_role() -> list[str]:
    """The --permissions of `gcloud iam roles create` in docs/deploy.md."""
    text = (REPO / "docs/deploy.md").read_text()
    joined = re.search(r"--permissions=((?:[\w.,]|\\\n *)+)", text)
    assert joined, "docs/deploy.md creates no role"
    return sorted(set(re.sub(r"\\\n *", "", joined.group(1)).split(",")))


@dataclass
class Chain:
    """One Flow's VM (vm-0, ip-0) behind a Cloud Run job and a Cloud Scheduler job."""

    flow: Flow
    settings: dict[str, str] = field(default_factory=dict)  # the job's more environment

    @property
    def emu(self) -> EmulatorProcess:
        assert self.flow.emu is not None
        return self.flow.emu

    def gcloud(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """gcloud as the operator (the project's owner), inside the private network."""
        r = self.emu.gcloud(*args, timeout=timeout)
        assert r.returncode == 0, f"gcloud {' '.join(args)}: {r.stderr}"
        return r

    def job_env(self) -> str:
        env = {
            "PROJECT_ID": PROJECT,
            "REGION": REGION,
            "ZONE": ZONE,
            "INSTANCE": "vm-0",
            "STATIC_NAME": "ip-0",
            "SCHEDULE": SCHEDULE,
            "TIME_ZONE": TIME_ZONE,
            "AGENT_PORT": str(self.flow.port),
            "BOOT_TIMEOUT": "60",
            "RUN_TIMEOUT": "120",
            "STOP_TIMEOUT": "60",
            "API_TIMEOUT": "30",
            **self.settings,
        }
        return "^|^" + "|".join(f"{k}={v}" for k, v in env.items())

    def deploy(
        self,
        *job_flags: str,
        role: list[str] | None = None,
        invoker: bool = True,
    ) -> None:
        """docs/deploy.md's steps for the job and its schedule: the accounts, the token's
        secret, the orchestrator's role (ROLE: the documented one by default), the image, the
        job (with JOB_FLAGS), the scheduler's right to run it (unless not INVOKER), the
        scheduler job."""
        for name in ("vm-orchestrator", "vm-scheduler"):
            self.gcloud("iam", "service-accounts", "create", name)
        self.emu.run(
            ["bash", "-c", f"printf %s {TOKEN} | gcloud secrets create agent-token --data-file=-"]
        ).check_returncode()
        self.gcloud(
            "secrets", "add-iam-policy-binding", "agent-token",
            f"--member=serviceAccount:{sa('vm-orchestrator')}",
            "--role=roles/secretmanager.secretAccessor",
        )  # fmt: skip
        self.gcloud(
            "iam", "roles", "create", "vmJobOrchestrator", f"--project={PROJECT}",
            "--title=VM job orchestrator",
            "--permissions=" + ",".join(documented_role() if role is None else role),
        )  # fmt: skip
        self.gcloud(
            "projects", "add-iam-policy-binding", PROJECT,
            f"--member=serviceAccount:{sa('vm-orchestrator')}",
            f"--role=projects/{PROJECT}/roles/vmJobOrchestrator",
        )  # fmt: skip
        self.build()
        self.gcloud(
            "run", "jobs", "deploy", JOB, f"--image={IMAGE}", f"--region={REGION}",
            f"--service-account={sa('vm-orchestrator')}",
            f"--set-env-vars={self.job_env()}",
            "--set-secrets=AGENT_TOKEN=agent-token:latest",
            "--tasks=1", *job_flags,
        )  # fmt: skip
        if invoker:
            self.gcloud(
                "run", "jobs", "add-iam-policy-binding", JOB, f"--region={REGION}",
                f"--member=serviceAccount:{sa('vm-scheduler')}", "--role=roles/run.invoker",
            )  # fmt: skip
        self.gcloud(
            "scheduler", "jobs", "create", "http", SCHEDULER_JOB, f"--location={REGION}",
            f"--schedule={SCHEDULE}", f"--time-zone={TIME_ZONE}", "--http-method=POST",
            f"--uri={RUN_URI}", f"--oauth-service-account-email={sa('vm-scheduler')}",
        )  # fmt: skip

    def build(self) -> None:
        """docs/deploy.md's image: a repository, and `gcloud builds submit --tag` of this
        repository (its Dockerfile, the files gcloud uploads)."""
        self.gcloud(
            "artifacts", "repositories", "create", "jobs", "--repository-format=docker",
            f"--location={REGION}",
        )  # fmt: skip
        r = self.emu.run(
            ["bash", "-c", f'cd "{REPO}" && gcloud builds submit --tag "{IMAGE}" .'], timeout=300
        )
        assert r.returncode == 0, f"gcloud builds submit: {r.stdout}\n{r.stderr}"

    def fire(self, **how: Any) -> dict[str, Any]:
        """The test clock fires the scheduler job's slot of now (HOW: copies, delay, drop)."""
        return fire(self.emu, SCHEDULER_JOB, **how)

    def executions(self) -> list[dict[str, Any]]:
        return executions(self.emu, JOB)

    def wait_done(self, count: int = 1, timeout: float = 240) -> list[dict[str, Any]]:
        """The job's first COUNT executions, once each has ended."""
        return wait_done(self.emu, JOB, count, timeout)

    def describe(self, execution: str) -> dict[str, Any]:
        r = self.gcloud(
            "run", "jobs", "executions", "describe", execution, f"--region={REGION}",
            "--format=json",
        )  # fmt: skip
        return json.loads(r.stdout)

    def log(self, execution: str, attempt: int | None = None) -> list[str]:
        """The execution's log (of one attempt) as Cloud Logging has it, oldest first."""
        return execution_log(self.emu, JOB, execution, attempt)


# -- what an operator (or a test) reads of any deployment's jobs ---------------------------------


def fire(emu: EmulatorProcess, scheduler_job: str, **how: Any) -> dict[str, Any]:
    """The test clock fires SCHEDULER_JOB's slot of now (HOW: copies, delay, drop), and waits
    for its deliveries' attempts."""
    r = emu.http.post(
        "/_emulator/scheduler/fire", json={"job": scheduler_job, "wait": 60, **how}, timeout=90
    )
    assert r.status_code == 200, r.text
    return r.json()


def executions(emu: EmulatorProcess, job: str) -> list[dict[str, Any]]:
    return [e for e in emu.state()["run"]["executions"] if e["job"] == job]


def wait_done(emu: EmulatorProcess, job: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """JOB's first COUNT executions, once each has ended."""
    deadline = time.monotonic() + timeout
    while True:
        runs = executions(emu, job)
        if len(runs) >= count and all(e["done"] for e in runs):
            return runs
        assert time.monotonic() < deadline, f"executions not ended in {timeout} s: {runs}"
        time.sleep(0.2)


def execution_log(
    emu: EmulatorProcess, job: str, execution: str, attempt: int | None = None
) -> list[str]:
    """JOB's EXECUTION's log (of one attempt) as Cloud Logging has it, oldest first
    (`gcloud logging read`)."""
    query = (
        f'resource.type="cloud_run_job" AND resource.labels.job_name="{job}" AND '
        f'labels."run.googleapis.com/execution_name"="{execution}"'
    )
    if attempt is not None:
        query += f' AND labels."run.googleapis.com/task_attempt"="{attempt}"'
    r = emu.gcloud("logging", "read", query, "--order=asc", "--limit=5000", "--format=json")
    assert r.returncode == 0, f"gcloud logging read: {r.stderr}"
    return [e.get("textPayload") or e.get("jsonPayload", {}).get("message", "") for e in
            json.loads(r.stdout)]  # fmt: skip

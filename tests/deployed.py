"""A deployment made by deploy.sh on the emulated chain, from an empty project, as tests drive
it (tests/test_deploy.py, tests/test_alerts.py): deploy.sh, gcloud and the scheduler's test clock
in the emulator's private network, the executions and their logs, the journal's changes."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from gcp_emulator.demo import Deployment
from tests import chain
from tests.harness import REPO, EmulatorProcess

PROJECT = "deploy-project"
REGION = "asia-northeast3"
JOB = "vm-job-runner"
SCHEDULER_JOB = f"{JOB}-slots"
CHECK_JOB = f"{JOB}-check"
# what only reads: every other call of an apply changes something
READS = re.compile(r"\.(get|list|getIamPolicy|access|aggregatedList|getFromFamily|wait)$")


@dataclass
class Deployed:
    emu: EmulatorProcess
    dep: Deployment

    def sh(self, *args: str, timeout: float = 600, ok: bool = True) -> subprocess.CompletedProcess:
        """./deploy.sh ARGS in the private network, as the project's owner, with no terminal."""
        r = self.emu.run(
            ["bash", str(REPO / "deploy.sh"), *args],
            timeout=timeout,
            DEPLOY_ENV=str(self.dep.deploy_env),
        )
        if ok:
            assert r.returncode == 0, f"deploy.sh {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r

    def gcloud_json(self, *args: str) -> Any:
        r = self.emu.gcloud(*args, "--format=json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def executions(self) -> list[dict[str, Any]]:
        return chain.executions(self.emu, JOB)

    def wait_done(self, count: int, timeout: float = 180) -> list[dict[str, Any]]:
        return chain.wait_done(self.emu, JOB, count, timeout)

    def fire(self, job: str = SCHEDULER_JOB) -> dict[str, Any]:
        """The scheduler job's slot of now, delivered (the test clock)."""
        return chain.fire(self.emu, job)

    def log(self, execution: str) -> str:
        return "\n".join(chain.execution_log(self.emu, JOB, execution))

    def changes(self) -> list[str]:
        """The calls since the journal was cleared that change something."""
        return [c["api"] for c in self.emu.calls() if not READS.search(c["api"])]

    def vm(self) -> dict[str, Any]:
        return self.emu.instance(JOB)

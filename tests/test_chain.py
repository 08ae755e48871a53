"""The chain our users deploy, end to end on the emulator's private network with the real
gcloud and no endpoint override: Cloud Scheduler → the Cloud Run job (the image this
repository's Dockerfile builds, as its service account) → entrypoint.sh → the VM
(tests/chain.py sets it up as docs/deploy.md does)."""

from __future__ import annotations

import os

import pytest

from tests.chain import Chain, documented_role
from tests.harness import needs_gcloud, needs_private_network
from tests.test_signals import closing_job, handler_runs, slot_state

pytestmark = [pytest.mark.e2e, needs_gcloud, needs_private_network]


@pytest.fixture
def chain(make_flow):
    def make(env: dict[str, str] | None = None, settings: str = "", **flow: object) -> Chain:
        made = make_flow(private=True, settings=f'scheduler_clock = "test"\n{settings}', **flow)
        return Chain(made, dict(env or {}))

    return make


def signals(chain: Chain) -> list[tuple[str, str]]:
    return [
        (e["signal"], e["why"])
        for e in chain.emu.journal()
        if e["kind"] == "event" and e.get("event") == "run.signal"
    ]


def test_a_scheduled_slot_runs_the_job_on_the_vm_through_cloud_run(chain):
    c = chain(job="echo 'job output line'; echo \"netns $(readlink /proc/self/ns/net)\"")
    c.deploy("--max-retries=0")
    fired = c.fire()
    assert [a["status"] for d in fired["deliveries"] for a in d["attempts"]] == [200], fired
    [execution] = c.wait_done()
    assert execution["result"] == "succeeded", execution
    log = c.log(execution["name"])
    text = "\n".join(log)
    assert "job output line" in log, text
    assert "step 1/6: slot " in text and "cleanup: done" in text, text
    described = c.describe(execution["name"])
    assert described["status"]["succeededCount"] == 1, described["status"]
    assert len(c.flow.runs()) == 1, c.flow.runs()
    c.flow.assert_cleaned_up()
    # the VM's job ran in the emulator's network, where only loopback exists
    inside = os.readlink(f"/proc/{c.emu.env['GCP_EMULATOR_NETNS']}/ns/net")
    assert f"netns {inside}" in log, text
    assert inside != os.readlink("/proc/self/ns/net")


def test_a_task_past_its_timeout_cleans_up_within_cloud_runs_ten_seconds(chain, tmp_path):
    job, handled = closing_job(tmp_path)
    c = chain(job=job)
    c.deploy("--max-retries=0", "--task-timeout=25s")
    c.fire()
    [execution] = c.wait_done(timeout=120)
    assert execution["result"] == "failed", execution
    assert signals(c) == [("SIGTERM", "timeout")], "Cloud Run's SIGKILL came: the cleanup was late"
    text = "\n".join(c.log(execution["name"]))
    assert "closing orders" in text and "orders closed" in text, text
    assert text.index("cancelled (its record says cancelled)") < text.index(
        "cleanup: stopping vm-0"
    )
    assert len(handler_runs(handled)) == 1
    assert slot_state(c.flow) == "cancelled"
    c.flow.assert_cleaned_up(stopping_for=30)
    described = c.describe(execution["name"])
    assert described["status"]["failedCount"] == 1, described["status"]


def test_a_failed_attempt_is_retried_as_attempt_1_which_reruns_the_failed_slot(chain, tmp_path):
    marker = tmp_path / "failed-once"
    c = chain(
        env={"RERUN_FAILED": "1"},
        job=f"if [ -e {marker} ]; then echo 'job output line'; else touch {marker}; exit 3; fi",
    )
    c.deploy("--max-retries=1")
    c.fire()
    [execution] = c.wait_done()
    assert [(a["attempt"], a["outcome"]) for a in execution["attempts"]] == [
        (0, "failed"),
        (1, "succeeded"),
    ], execution
    retry = "\n".join(c.log(execution["name"], attempt=1))
    assert "step 2/6: a retry: this execution's run" in retry, retry
    assert "job output line" in retry, retry
    assert len(c.flow.runs()) == 2, c.flow.runs()
    c.flow.assert_cleaned_up()


def test_a_slot_delivered_twice_runs_the_job_once(chain):
    c = chain()
    c.deploy("--max-retries=0")
    fired = c.fire(copies=2)
    assert len(fired["deliveries"]) == 2
    executions = c.wait_done(count=2)
    assert len(executions) == 2 and all(e["result"] == "succeeded" for e in executions)
    assert len(c.flow.runs()) == 1, f"the slot ran {len(c.flow.runs())} times"
    logs = ["\n".join(c.log(e["name"])) for e in executions]
    assert sum("job output line" in text for text in logs) == 1, logs
    assert any("not running it again" in text for text in logs), logs
    c.flow.assert_cleaned_up()


def test_a_role_missing_a_permission_fails_the_execution_naming_it(chain):
    c = chain()
    c.deploy(
        "--max-retries=0", role=[p for p in documented_role() if p != "compute.instances.start"]
    )
    c.fire()
    [execution] = c.wait_done()
    assert execution["result"] == "failed", execution
    text = "\n".join(c.log(execution["name"]))
    assert "compute.instances.start" in text, text
    assert c.flow.runs() == []
    c.flow.assert_cleaned_up()


def test_a_scheduler_without_the_invoker_role_is_refused_naming_the_permission(chain):
    c = chain()
    c.deploy(invoker=False)
    fired = c.fire()
    [delivery] = fired["deliveries"]
    assert [a["status"] for a in delivery["attempts"]] == [403], delivery
    assert c.executions() == []
    described = c.gcloud(
        "scheduler", "jobs", "describe", "vm-job-runner-slots", "--location=asia-northeast3",
        "--format=value(status.code,status.message)",
    ).stdout  # fmt: skip
    assert described.startswith("7\t") and "run.jobs.run" in described, described

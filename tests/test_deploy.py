"""deploy.sh on the emulated chain, from an empty project (no API enabled, no VM, no address),
with the real gcloud in the emulator's private network: what apply makes runs the job on a
schedule; a second apply changes nothing; a changed schedule changes the scheduler and the job
together; an apply killed half-way is finished by the next; rotate-token with runs on either
side; destroy leaves nothing apply made (the static address only when asked)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.deployed import JOB, PROJECT, REGION, SCHEDULER_JOB, Deployed
from tests.harness import REPO, needs_gcloud, needs_private_network

# each test runs deploy.sh apply from an empty project (35-50 s alone) and more: 45-90 s on an
# idle machine, past pytest's default 180 s under CI's load (three workers on two cores)
pytestmark = [pytest.mark.e2e, needs_gcloud, needs_private_network, pytest.mark.timeout(400)]


def project_roles(d: Deployed) -> dict[str, list[str]]:
    policy = d.gcloud_json("projects", "get-iam-policy", PROJECT)
    out: dict[str, list[str]] = {}
    for b in policy.get("bindings", []):
        for m in b["members"]:
            out.setdefault(m, []).append(b["role"])
    return out


def test_apply_from_an_empty_project_deploys_a_schedule_whose_slot_runs_the_job(deployed):
    d = deployed(job='echo "my job ran, DRY_RUN=${DRY_RUN:-0}"')
    # a plan where no API is enabled yet: everything to make, and nothing made
    plan = d.sh("plan")
    assert "enable   APIs: compute.googleapis.com" in plan.stdout, plan.stdout
    assert "exists" not in plan.stdout and "23 to change" in plan.stdout, plan.stdout
    assert d.changes() == [], "a plan changed something"
    r = d.sh("apply")
    made = re.search(r"apply: (\d+) changes made \((\d+) gcloud calls, ([\d.]+) s\)", r.stderr)
    assert made and made.group(1) == "23", r.stderr
    print(f"apply from an empty project: {made.group(1)} changes, {made.group(2)} gcloud calls, "
          f"{made.group(3)} s before its first run")  # fmt: skip
    # it ends with a first run in test mode that took no slot and worked
    assert "first run: executing vm-job-runner in test mode" in r.stderr
    [first] = d.wait_done(1)
    assert first["result"] == "succeeded", r.stderr
    assert "my job ran, DRY_RUN=1" in d.log(first["name"])
    vm = d.vm()
    assert vm["status"] == "TERMINATED" and vm["access_configs"] == []
    assert d.emu.address("vm-job-runner-ip")["status"] == "RESERVED"
    # the VM as docs/deploy.md describes it
    described = d.gcloud_json("compute", "instances", "describe", JOB, "--zone=asia-northeast3-c")
    assert "accessConfigs" not in described["networkInterfaces"][0], "no external address"
    assert described["scheduling"]["instanceTerminationAction"] == "STOP"
    assert described["scheduling"]["maxRunDuration"] == {"seconds": str(120 + 300 + 60 + 60)}
    assert described["serviceAccounts"][0]["email"] == f"vm-agent@{PROJECT}.iam.gserviceaccount.com"
    # the scheduler fires the slot; the job runs it for real, as the accounts apply made
    fired = d.fire()
    assert [a["status"] for x in fired["deliveries"] for a in x["attempts"]] == [200], fired
    [_, slot] = d.wait_done(2)
    assert slot["result"] == "succeeded", d.log(slot["name"])
    text = d.log(slot["name"])
    assert "my job ran, DRY_RUN=0" in text and "step 1/6: slot " in text, text
    assert d.vm()["status"] == "TERMINATED" and d.vm()["access_configs"] == []
    # and IAM holds no more than the flow needs: the orchestrator its role, no one else anything
    roles = project_roles(d)
    orchestrator = f"serviceAccount:vm-orchestrator@{PROJECT}.iam.gserviceaccount.com"
    assert roles.get(orchestrator) == [f"projects/{PROJECT}/roles/vmJobOrchestrator"], roles
    assert not [m for m in roles if "vm-agent" in m or "vm-scheduler" in m], roles
    # the scheduler's account may run the job, with or without `check`, and nothing else
    job_policy = d.gcloud_json("run", "jobs", "get-iam-policy", JOB, f"--region={REGION}")
    assert job_policy["bindings"] == [{
        "members": [f"serviceAccount:vm-scheduler@{PROJECT}.iam.gserviceaccount.com"],
        "role": f"projects/{PROJECT}/roles/vmJobScheduler",
    }], job_policy  # fmt: skip


@pytest.mark.timeout(300)
def test_a_second_apply_changes_nothing_and_a_changed_schedule_changes_both(deployed):
    d = deployed()
    d.sh("apply", "--no-test-run")
    d.emu.clear_journal()
    started = time.monotonic()
    r = d.sh("apply")
    seconds = time.monotonic() - started
    assert "apply: nothing changed" in r.stderr, r.stderr
    assert d.changes() == [], "an unchanged apply changed something"
    assert d.executions() == [], "no first run when nothing changed"
    calls = re.search(r"nothing changed \((\d+) gcloud calls", r.stderr)
    assert calls, r.stderr
    print(f"unchanged apply: {calls.group(1)} gcloud calls, {seconds:.1f} s")
    plan = d.sh("plan")
    assert "No changes" in plan.stdout and not re.search(r"^  (create|update)", plan.stdout, re.M)

    # CHECK_SCHEDULE unset: the check of each slot follows, START_DEADLINE + CHECK_MARGIN later
    d.dep.settings(SCHEDULE="30 9 * * 1-5", TIME_ZONE="America/New_York", CHECK_SCHEDULE="")
    plan = d.sh("plan")
    assert "update   Cloud Run job vm-job-runner: env.SCHEDULE,env.TIME_ZONE" in plan.stdout, (
        plan.stdout
    )
    assert "update   Cloud Scheduler job vm-job-runner-slots: schedule,time-zone" in plan.stdout
    assert "update   Cloud Scheduler job vm-job-runner-check: schedule,time-zone" in plan.stdout
    assert "3 to change" in plan.stdout
    d.emu.clear_journal()
    d.sh("apply", "--no-test-run")
    assert sorted(d.changes()) == ["cloudscheduler.jobs.patch"] * 2 + ["run.jobs.replaceJob"]
    scheduler = d.gcloud_json(
        "scheduler", "jobs", "describe", SCHEDULER_JOB, f"--location={REGION}"
    )
    assert (scheduler["schedule"], scheduler["timeZone"]) == ("30 9 * * 1-5", "America/New_York")
    check = d.gcloud_json("scheduler", "jobs", "describe", f"{JOB}-check", f"--location={REGION}")
    assert (check["schedule"], check["timeZone"]) == ("46 9 * * 1-5", "America/New_York")
    job = d.gcloud_json("run", "jobs", "describe", JOB, f"--region={REGION}")
    env = {
        e["name"]: e.get("value")
        for e in job["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (env["SCHEDULE"], env["TIME_ZONE"]) == ("30 9 * * 1-5", "America/New_York")


@pytest.mark.timeout(300)
def test_another_alert_address_and_a_new_webhook_change_only_the_alerts(deployed):
    """The e-mail channel changed in place, a new webhook channel, the policy told of both (the
    plan counts the channel it would make); nothing else."""
    d = deployed()
    d.sh("apply", "--no-test-run")
    d.dep.settings(
        ALERT_EMAIL="oncall@example.com", ALERT_WEBHOOK_URL="http://127.0.0.1:9/h?auth_token=t0k"
    )
    plan = d.sh("plan")
    assert (
        "update   notification channel vm-job-runner alerts (email): oncall@example.com: address"
        in plan.stdout
    ), plan.stdout
    assert (
        "create   notification channel vm-job-runner alerts (webhook): http://127.0.0.1:9/…"
        in plan.stdout
    )
    assert (
        'update   alert policy "vm-job-runner: a slot failed or was missed": channels'
        in plan.stdout
    )
    assert "t0k" not in plan.stdout + plan.stderr and "3 to change" in plan.stdout
    d.emu.clear_journal()
    d.sh("apply", "--no-test-run")
    assert sorted(d.changes()) == [
        "monitoring.projects.alertPolicies.patch",
        "monitoring.projects.notificationChannels.create",
        "monitoring.projects.notificationChannels.patch",
    ]
    channels = {c["type"]: c for c in d.gcloud_json("beta", "monitoring", "channels", "list")}
    assert channels["email"]["labels"] == {"email_address": "oncall@example.com"}
    [policy] = d.gcloud_json("alpha", "monitoring", "policies", "list")
    assert sorted(policy["notificationChannels"]) == sorted(c["name"] for c in channels.values())
    assert "No changes" in d.sh("plan").stdout


def test_an_apply_killed_half_way_is_finished_by_the_next(deployed):
    d = deployed()
    proc = subprocess.Popen(
        d.emu.inside(["bash", str(REPO / "deploy.sh"), "apply"]),
        env={**os.environ, **d.emu.env, "DEPLOY_ENV": str(d.dep.deploy_env)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # killed just after the VM is created: before it is stopped, before the image exists
        deadline = time.monotonic() + 300
        while not d.emu.calls("compute.instances.insert"):
            assert proc.poll() is None, "apply ended before it made the VM"
            assert time.monotonic() < deadline, "apply never made the VM"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "run" not in d.emu.state() or d.executions() == []
    plan = d.sh("plan")
    assert "create   Cloud Run job vm-job-runner" in plan.stdout, plan.stdout
    r = d.sh("apply")
    assert "apply: nothing changed" not in r.stderr
    assert d.sh("plan").stdout.count("  exists ") == 23, "the next apply finished the deployment"
    [first] = d.wait_done(1)
    assert first["result"] == "succeeded"
    assert d.vm()["status"] == "TERMINATED"


def test_rotate_token_with_a_run_on_either_side_fails_no_run(deployed):
    d = deployed()
    d.sh("apply", "--no-test-run")

    def dry_run() -> dict[str, Any]:
        r = d.emu.gcloud(
            "run", "jobs", "execute", JOB, f"--region={REGION}", "--wait",
            "--update-env-vars=MODE=test", timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return d.executions()[-1]

    before = dry_run()
    r = d.sh("rotate-token")
    assert "version 2 holds a new token" in r.stderr, r.stderr
    after = dry_run()
    assert before["result"] == after["result"] == "succeeded"
    versions = d.gcloud_json("secrets", "versions", "list", "agent-token")
    assert sorted(v["state"] for v in versions) == ["ENABLED", "ENABLED"]
    d.sh("rotate-token")
    versions = {v["name"].rsplit("/", 1)[1]: v["state"] for v in
                d.gcloud_json("secrets", "versions", "list", "agent-token")}  # fmt: skip
    assert versions == {"1": "DISABLED", "2": "ENABLED", "3": "ENABLED"}, versions
    assert dry_run()["result"] == "succeeded"
    assert r.stdout == "" and not re.search(r"[A-Za-z0-9_-]{43}", r.stderr), "no token printed"


def test_destroy_removes_what_apply_made_and_the_address_only_when_asked(deployed):
    d = deployed()
    d.sh("apply", "--no-test-run")
    refused = d.sh("destroy", ok=False)
    assert refused.returncode == 1 and "destroy --yes" in refused.stderr
    assert d.vm()["name"] == JOB, "nothing deleted without --yes"
    d.sh("destroy", "--yes")
    state = d.emu.state()
    assert [i["name"] for i in state["instances"]] == []
    assert [a["name"] for a in state["addresses"]] == ["vm-job-runner-ip"], "the address stays"
    plan = d.sh("plan").stdout
    assert plan.count("  exists ") == 2, plan  # the APIs and the address
    assert "exists   address vm-job-runner-ip" in plan
    for line in (
        "create   Cloud Scheduler job",
        "create   Cloud Run job",
        "create   VM ",
        "create   secret agent-token",
        "create   firewall rule",
        "create   service account vm-agent",
        "update   role vmJobOrchestrator: deleted",
    ):
        assert line in plan, plan  # fmt: skip
    d.sh("destroy", "--yes", "--address")
    assert d.emu.state()["addresses"] == []


@pytest.mark.timeout(600)  # apply, two slots a minute apart, destroy: 2 min idle, more in CI
def test_the_scheduled_demo_deploys_fires_two_slots_and_removes_it_all():
    r = subprocess.run(
        [sys.executable, "-m", "gcp_emulator", "demo", "--scheduled", "--slots", "2", "--fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert "first run: vm-job-runner-" in r.stderr and "succeeded" in r.stderr
    for n in (1, 2):
        assert re.search(rf"slot {n}/2: vm-job-runner-\w+ succeeded \(slot 20\d\d-", r.stderr)
    assert r.stdout.count("demo job: hello from vm-job-runner, DRY_RUN=0") == 2, r.stdout
    assert "2 slots, each ran once and succeeded" in r.stderr
    assert "destroy: done" in r.stderr
    # executions list as gcloud prints it: the scheduled ones run by the scheduler's account
    assert r.stdout.count(f"vm-scheduler@{PROJECT}.iam.gserviceaccount.com") == 2, r.stdout

"""Alerts on the emulated chain, deployed by deploy.sh from an empty project with a webhook
channel on loopback: a slot whose job fails tells the webhook within two minutes of its
execution's end; a slot that succeeded, and one that succeeded on its retry, tell nobody; a slot
missed while the scheduler job is paused makes the check's execution fail with exit 12, which
tells the webhook too. The emulator's Monitoring evaluates deploy.sh's alert policy
(gcp_emulator/monitoring/alerting.py)."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.deployed import CHECK_JOB, JOB, REGION, SCHEDULER_JOB, Deployed
from tests.harness import WebhookReceiver, needs_gcloud, needs_private_network

pytestmark = [pytest.mark.e2e, needs_gcloud, needs_private_network]

ALERT_WITHIN = 120  # seconds from the execution's end to the webhook's notification


@pytest.fixture
def webhook():
    hook = WebhookReceiver()
    yield hook
    hook.close()


def next_minute() -> None:
    """Sleep into the next minute: a slot a minute (`* * * * *`), the next slot's time."""
    time.sleep(61 - time.time() % 60)


def completed_at(execution: dict[str, Any]) -> float:
    return datetime.fromisoformat(execution["completed"]).timestamp()


def notification(hook: WebhookReceiver, after: float, count: int = 1) -> tuple[dict, float]:
    """The webhook's COUNT-th body and the seconds from AFTER to its arrival (waiting up to
    ALERT_WITHIN + 10 s for it)."""
    deadline = time.time() + ALERT_WITHIN + 10
    while len(hook.bodies) < count:
        assert time.time() < deadline, f"no notification within {ALERT_WITHIN} s"
        time.sleep(0.2)
    return hook.bodies[count - 1], hook.arrived[count - 1] - after


def quiet(hook: WebhookReceiver, seconds: float = 5) -> list[dict[str, Any]]:
    """What the webhook got in the next SECONDS (a notification is sent as the point arrives)."""
    time.sleep(seconds)
    return list(hook.bodies)


def attempts(execution: dict[str, Any]) -> list[tuple[int, str, int | None]]:
    return [(a["attempt"], a["outcome"], a["exit_code"]) for a in execution["attempts"]]


@pytest.mark.timeout(600)  # two waits for the next minute's slot, three executions
def test_a_failed_slot_alerts_within_two_minutes_and_a_good_or_retried_one_alerts_nobody(
    deployed, webhook
):
    markers = Path(tempfile.mkdtemp(prefix="vm-job-alerts-"))
    markers.chmod(0o755)
    fail = markers / "fail-the-job"
    d: Deployed = deployed(
        job=f"if [ -e {fail} ]; then echo 'the job fails'; exit 3; fi; echo 'job ran'",
        settings={"ALERT_WEBHOOK_URL": webhook.url},
    )
    applied = d.sh("apply")
    assert "notification channel vm-job-runner alerts (webhook): http://127.0.0.1" in applied.stderr
    assert "?auth_token" not in applied.stdout + applied.stderr, "the webhook's URL was printed"
    assert "first run:" in applied.stderr and d.executions()[0]["result"] == "succeeded"

    # a slot whose first attempt fails before the job starts, and whose retry succeeds
    d.emu.fault("compute.instances.start", status=403)
    d.fire()
    retried = d.wait_done(2)[1]
    assert retried["result"] == "succeeded", retried
    assert [(a, o) for a, o, _ in attempts(retried)] == [(0, "failed"), (1, "succeeded")]
    assert quiet(webhook) == [], "a slot that succeeded on its retry alerted"

    next_minute()  # the next slot: succeeds at once
    d.fire()
    good = d.wait_done(3)[2]
    assert good["result"] == "succeeded", good
    assert quiet(webhook) == [], "a slot that succeeded alerted"

    fail.touch()
    next_minute()
    d.fire()
    failed = d.wait_done(4)[3]
    assert failed["result"] == "failed", failed
    body, latency = notification(webhook, completed_at(failed))
    print(f"failed slot: execution end -> webhook notification {latency:.2f} s")
    assert latency <= ALERT_WITHIN
    incident = body["incident"]
    assert body["version"] == "1.2" and incident["state"] == "open"
    assert incident["policy_name"] == f"{JOB}: a slot failed or was missed"
    assert incident["resource"]["labels"]["job_name"] == JOB
    assert incident["metric"]["labels"] == {"result": "failed"}
    assert "exit codes" in incident["documentation"]["content"]
    assert len(webhook.bodies) == 1, "one failed slot, one notification"
    emails = [n for n in d.emu.state()["monitoring"]["notifications"] if n["type"] == "email"]
    assert [(n["to"], n["state"]) for n in emails] == [("ops@example.com", "open")]
    summary = [line for line in d.log(failed["name"]).splitlines() if line.startswith("summary:")]
    assert summary and summary[-1].startswith("summary: failed (exit 1) slot "), summary


@pytest.mark.timeout(600)  # two waits for the next minute, three executions, a plan
def test_a_slot_missed_while_the_scheduler_is_paused_fails_the_check_with_12_and_alerts(
    deployed, webhook
):
    # a slot a minute, which must start within 60 s; the check runs every minute and judges
    # the slot of a minute before
    d: Deployed = deployed(
        settings={
            "ALERT_WEBHOOK_URL": webhook.url,
            "START_DEADLINE": "60",
            "CHECK_MARGIN": "0",
            "CHECK_SCHEDULE": "* * * * *",
        },
    )
    d.sh("apply", "--no-test-run")
    d.fire()
    [slot] = d.wait_done(1)
    assert slot["result"] == "succeeded", slot

    next_minute()  # the check of that slot: it succeeded
    d.fire(CHECK_JOB)
    check_ok = d.wait_done(2)[1]
    assert check_ok["result"] == "succeeded", check_ok
    check_log = d.log(check_ok["name"])
    assert "succeeded (execution" in check_log, check_log
    assert quiet(webhook) == []

    r = d.emu.gcloud("scheduler", "jobs", "pause", SCHEDULER_JOB, f"--location={REGION}")
    assert r.returncode == 0, r.stderr
    next_minute()  # this minute's slot is not delivered: the scheduler job is paused
    d.fire(CHECK_JOB)
    missed = d.wait_done(3)[2]
    assert missed["result"] == "failed", missed
    assert {code for _, _, code in attempts(missed)} == {12}, attempts(missed)
    log = d.log(missed["name"])
    assert "missed: never started" in log, log
    body, latency = notification(webhook, completed_at(missed))
    print(f"missed slot: check's execution end -> webhook notification {latency:.2f} s")
    assert latency <= ALERT_WITHIN
    assert body["incident"]["state"] == "open"
    status = d.sh("status").stdout
    assert f"{SCHEDULER_JOB}: PAUSED" in status and f"{CHECK_JOB}: ENABLED" in status, status

    # a channel the operator adds to the policy by hand stays through the next apply
    r = d.emu.gcloud("beta", "monitoring", "channels", "create", "--display-name=pager",
                     "--type=email", "--channel-labels=email_address=pager@example.com",
                     "--format=value(name)")  # fmt: skip
    assert r.returncode == 0, r.stderr
    pager = r.stdout.strip()
    [policy] = d.gcloud_json("alpha", "monitoring", "policies", "list")
    r = d.emu.gcloud("alpha", "monitoring", "policies", "update", policy["name"],
                     f"--add-notification-channels={pager}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = d.sh("plan").stdout
    assert "No changes" in plan, plan
    [policy] = d.gcloud_json("alpha", "monitoring", "policies", "list")
    assert pager in policy["notificationChannels"] and len(policy["notificationChannels"]) == 3

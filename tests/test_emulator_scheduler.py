"""The emulator's Cloud Scheduler: its fire times (the orchestrator's own rule, so that both agree
on a daylight-saving day), its deliveries (the target called with the job's account's token,
retried per retryConfig, never past the next fire time, cut at attemptDeadline), the test
clock's hook; and the gcloud commands that manage it, with the real gcloud."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gcp_emulator.config import default_config
from gcp_emulator.core.state import Cloud
from gcp_emulator.core.util import stamp
from gcp_emulator.scheduler.models import SchedulerJob, backoff, may_retry
from tests.harness import EmulatorProcess, needs_gcloud, needs_private_network

REGION = "us-central1"
TARGET = "https://target.example.test/hook"


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%MZ")


class Target:
    """An HTTP target that answers each call with the next of `answers` (status, delay)."""

    def __init__(self, answers: list[tuple[int, float]]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []
        self.finished = 0  # calls the target carried out to their end
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> JSONResponse:
        status, delay = self.answers[min(len(self.calls), len(self.answers) - 1)]
        self.calls.append({"time": time.time(), "headers": dict(request.headers)})
        await asyncio.sleep(delay)
        self.finished += 1
        return JSONResponse({}, status_code=status)


def scheduler_with(tmp_path: Path, target: Target) -> Cloud:
    cloud = Cloud(default_config(), tmp_path, "http://127.0.0.1:9", tmp_path)
    cloud.app = target.app
    cloud.iam.create_account("scheduler", {})
    return cloud


def job(schedule: str = "0 9 * * *", zone: str = "Etc/UTC", **retry: Any) -> SchedulerJob:
    return SchedulerJob(
        name=f"projects/demo-project/locations/{REGION}/jobs/j",
        schedule=schedule,
        time_zone=zone,
        target={
            "uri": TARGET,
            "httpMethod": "POST",
            "oauthToken": {"serviceAccountEmail": "scheduler@demo-project.iam.gserviceaccount.com"},
        },
        retry=retry,
        attempt_deadline=retry.pop("deadline", "180s"),
    )


def deliver(cloud: Cloud, j: SchedulerJob, schedule_time: float) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        delivery = await cloud.scheduler.deliver(j, schedule_time)
        return delivery.attempts

    return asyncio.run(scenario())


def test_fire_times_on_daylight_saving_days_follow_debian_cron():
    cloud = Cloud(default_config(), Path("/nonexistent"), "http://127.0.0.1:9", Path("/"))
    j = job("30 1,2 * * *", "America/New_York")
    # spring forward (2:00 EST becomes 3:00 EDT): the skipped 2:30 fires right after the change
    assert utc(cloud.scheduler.next_after(j, epoch("2027-03-14T06:31:00Z"))) == "2027-03-14T07:00Z"
    # fall back (2:00 EDT becomes 1:00 EST): the repeated 1:30 fires once, at its first pass
    assert utc(cloud.scheduler.next_after(j, epoch("2027-11-07T05:00:00Z"))) == "2027-11-07T05:30Z"
    assert utc(cloud.scheduler.next_after(j, epoch("2027-11-07T05:31:00Z"))) == "2027-11-07T07:30Z"


def test_the_real_clock_fires_a_passed_fire_time_once_and_does_not_catch_up(tmp_path):
    cloud = Cloud(default_config(), tmp_path, "http://127.0.0.1:9", tmp_path)
    j = job("* * * * *")
    cloud.scheduler.jobs[j.name] = j
    now = time.time()
    j.next_fire = now - 600  # ten fire times missed (the emulator was busy)
    due = cloud.scheduler.due(now)
    assert due == [(j, now - 600)]
    assert now < j.next_fire <= now + 60, "the next fire time is the first after now"
    assert cloud.scheduler.due(now) == []
    j.state, j.next_fire = "PAUSED", now - 1
    assert cloud.scheduler.due(now) == [], "a paused job does not fire"


def test_a_delivery_carries_the_accounts_token_and_cloud_schedulers_headers(tmp_path):
    target = Target([(200, 0)])
    cloud = scheduler_with(tmp_path, target)
    slot = epoch("2027-01-04T09:00:00Z")
    attempts = deliver(cloud, job(), slot)
    assert [(a["status"], a["ok"]) for a in attempts] == [(200, True)]
    headers = target.calls[0]["headers"]
    who = cloud.iam.principal_of(headers["authorization"])
    assert who == "serviceAccount:scheduler@demo-project.iam.gserviceaccount.com"
    assert headers["user-agent"] == "Google-Cloud-Scheduler"
    assert headers["x-cloudscheduler-scheduletime"] == "2027-01-04T09:00:00Z"
    assert headers["x-cloudscheduler-jobname"] == "j"


def test_a_failed_delivery_is_retried_with_doubling_backoff(tmp_path):
    target = Target([(503, 0), (503, 0), (200, 0)])
    cloud = scheduler_with(tmp_path, target)
    j = job(retryCount=3, minBackoffDuration="0.2s", maxBackoffDuration="10s", maxDoublings=5)
    attempts = deliver(cloud, j, time.time())
    assert [a["status"] for a in attempts] == [503, 503, 200]
    gaps = [b["time"] - a["time"] for a, b in zip(target.calls, target.calls[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, f"backoff 0.2 s, then doubled: {gaps}"


def test_retries_end_at_the_retry_count(tmp_path):
    target = Target([(500, 0)])
    cloud = scheduler_with(tmp_path, target)
    attempts = deliver(cloud, job(retryCount=1, minBackoffDuration="0.1s"), time.time())
    assert [a["status"] for a in attempts] == [500, 500]


def test_retries_stop_at_the_next_fire_time(tmp_path):
    target = Target([(503, 0)])
    cloud = scheduler_with(tmp_path, target)
    j = job("* * * * *", retryCount=5, minBackoffDuration="3600s")
    attempts = deliver(cloud, j, time.time())
    assert [a["status"] for a in attempts] == [503], "a retry an hour later is past the next slot"


def test_an_answer_later_than_the_attempt_deadline_is_a_failed_attempt(tmp_path):
    target = Target([(200, 2)])
    cloud = scheduler_with(tmp_path, target)
    j = job(deadline="1s")

    async def scenario() -> list[dict[str, Any]]:
        delivery = await cloud.scheduler.deliver(j, time.time())
        await asyncio.sleep(1.5)  # the target goes on with the call meanwhile
        return delivery.attempts

    attempts = asyncio.run(scenario())
    assert [(a["status"], a["ok"]) for a in attempts] == [(0, False)]
    assert j.status["code"] == 4, "DEADLINE_EXCEEDED"
    assert target.finished == 1, "past the deadline the answer is lost, not the call"


def test_timestamps_are_protobuf_json():
    assert stamp(epoch("2027-01-04T09:00:00Z")) == "2027-01-04T09:00:00Z"
    assert stamp(epoch("2027-01-04T09:00:00Z") + 0.25) == "2027-01-04T09:00:00.25Z"


# -- with gcloud ---------------------------------------------------------------------------


@pytest.fixture
def emu(tmp_path):
    config = tmp_path / "emulator.toml"
    config.write_text('scheduler_clock = "test"\n')
    started = EmulatorProcess(config, tmp_path / "emulator", private=True)
    yield started
    started.stop()


def ok(emu: EmulatorProcess, *args: str) -> str:
    r = emu.gcloud(*args)
    assert r.returncode == 0, f"gcloud {' '.join(args)}: {r.stderr}"
    return r.stdout


def describe(emu: EmulatorProcess, name: str) -> dict[str, Any]:
    return json.loads(
        ok(emu, "scheduler", "jobs", "describe", name, f"--location={REGION}", "--format=json")
    )


@pytest.mark.e2e
@needs_gcloud
@needs_private_network
def test_gcloud_manages_a_job_and_an_update_changes_only_what_it_names(emu):
    ok(
        emu, "scheduler", "jobs", "create", "http", "weekdays", f"--location={REGION}",
        "--schedule=0 9 * * 1-5", "--time-zone=Asia/Seoul", f"--uri={TARGET}",
        "--http-method=POST", "--max-retry-attempts=2", "--min-backoff=10s",
    )  # fmt: skip
    created = describe(emu, "weekdays")
    assert created["httpTarget"]["uri"] == TARGET and created["state"] == "ENABLED"
    assert created["retryConfig"]["retryCount"] == 2
    assert created["scheduleTime"].endswith(":00Z"), created
    ok(emu, "scheduler", "jobs", "update", "http", "weekdays", f"--location={REGION}",
       "--schedule=30 8 * * 1-5")  # fmt: skip
    updated = describe(emu, "weekdays")
    assert updated["schedule"] == "30 8 * * 1-5"
    assert updated["httpTarget"]["uri"] == TARGET and updated["timeZone"] == "Asia/Seoul"
    assert updated["retryConfig"]["retryCount"] == 2, "an update keeps what it does not name"
    ok(emu, "scheduler", "jobs", "pause", "weekdays", f"--location={REGION}")
    assert describe(emu, "weekdays")["state"] == "PAUSED"
    ok(emu, "scheduler", "jobs", "resume", "weekdays", f"--location={REGION}")
    assert describe(emu, "weekdays")["state"] == "ENABLED"
    listed = ok(emu, "scheduler", "jobs", "list", f"--location={REGION}", "--format=value(ID)")
    assert listed.split() == ["weekdays"]
    ok(emu, "scheduler", "jobs", "delete", "weekdays", f"--location={REGION}", "--quiet")
    gone = emu.gcloud("scheduler", "jobs", "describe", "weekdays", f"--location={REGION}")
    assert gone.returncode != 0 and "NOT_FOUND" in gone.stderr, gone.stderr
    bad = emu.gcloud(
        "scheduler", "jobs", "create", "http", "bad", f"--location={REGION}",
        "--schedule=61 * * * *", f"--uri={TARGET}",
    )  # fmt: skip
    assert bad.returncode != 0 and "Schedule or time zone is invalid" in bad.stderr, bad.stderr


def run_job_and_scheduler(emu: EmulatorProcess, uri: str) -> None:
    """A Cloud Run job (any image: its executions are what is counted) and a scheduler job that
    calls URI as an account with roles/run.invoker on the job."""
    image = f"{REGION}-docker.pkg.dev/demo-project/jobs/noop:1"
    context = emu.state_dir.parent / "noop"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text('FROM scratch\nENTRYPOINT ["/bin/true"]\n')
    r = emu.http.post("/_emulator/images", json={"name": image, "context": str(context)})
    assert r.status_code == 200, r.text
    ok(emu, "run", "jobs", "create", "noop", f"--image={image}", f"--region={REGION}")
    ok(emu, "iam", "service-accounts", "create", "scheduler")
    member = "serviceAccount:scheduler@demo-project.iam.gserviceaccount.com"
    ok(emu, "run", "jobs", "add-iam-policy-binding", "noop", f"--region={REGION}",
       f"--member={member}", "--role=roles/run.invoker")  # fmt: skip
    ok(
        emu, "scheduler", "jobs", "create", "http", "slots", f"--location={REGION}",
        "--schedule=*/5 * * * *", f"--uri={uri}", "--http-method=POST",
        "--oauth-service-account-email=scheduler@demo-project.iam.gserviceaccount.com",
    )  # fmt: skip


def fire(emu: EmulatorProcess, **how: Any) -> dict[str, Any]:
    r = emu.http.post("/_emulator/scheduler/fire", json={"job": "slots", "wait": 30, **how})
    assert r.status_code == 200, r.text
    return r.json()


def executions(emu: EmulatorProcess) -> list[dict[str, Any]]:
    return emu.state()["run"]["executions"]


@pytest.mark.e2e
@needs_gcloud
@needs_private_network
@pytest.mark.parametrize(
    "uri",
    [
        f"https://{REGION}-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/demo-project/jobs/noop:run",
        f"https://run.googleapis.com/v2/projects/demo-project/locations/{REGION}/jobs/noop:run",
    ],
    ids=["v1", "v2"],
)
def test_a_fired_slot_starts_an_execution_in_either_apis_form(emu, uri):
    run_job_and_scheduler(emu, uri)
    fired = fire(emu)
    assert [a["status"] for d in fired["deliveries"] for a in d["attempts"]] == [200], fired
    assert len(executions(emu)) == 1
    ok(emu, "scheduler", "jobs", "run", "slots", f"--location={REGION}")  # by hand: one more
    deadline = time.monotonic() + 30
    while len(executions(emu)) < 2:
        assert time.monotonic() < deadline, "jobs run did not deliver"
        time.sleep(0.2)
    assert describe(emu, "slots")["status"] == {}, "the last attempt succeeded"


@pytest.mark.e2e
@needs_gcloud
@needs_private_network
def test_the_test_clock_delivers_a_slot_twice_late_or_not_at_all(emu):
    uri = f"https://run.googleapis.com/v2/projects/demo-project/locations/{REGION}/jobs/noop:run"
    run_job_and_scheduler(emu, uri)
    slot = "2027-01-04T09:07:00Z"
    twice = fire(emu, at=slot, copies=2)
    assert [d["schedule_time"] for d in twice["deliveries"]] == ["2027-01-04T09:05:00Z"] * 2
    assert len(executions(emu)) == 2
    dropped = fire(emu, drop=True)
    assert dropped["deliveries"] == [] and len(executions(emu)) == 2
    assert [e["event"] for e in emu.journal() if e.get("event") == "scheduler.dropped"]
    asked = time.time()
    late = fire(emu, delay=2)
    assert late["deliveries"][0]["attempts"][0]["status"] == 200
    assert len(executions(emu)) == 3
    delivered = [e for e in emu.journal() if e.get("event") == "scheduler.delivery"][-1]
    assert delivered["time"] - asked >= 2, "the late delivery came early"


def test_the_backoff_doubles_then_grows_linearly_up_to_its_cap():
    waits = [backoff(n, 10, 300, 3) for n in range(9)]
    assert waits == [10, 20, 40, 80, 160, 240, 300, 300, 300], "RetryConfig's own example"


def test_retries_go_on_by_count_by_duration_or_until_both_are_reached():
    assert not may_retry(0, count=0, limit=0, elapsed=1), "neither: no retry"
    assert may_retry(1, count=2, limit=0, elapsed=10**6) and not may_retry(2, 2, 0, 1)
    assert may_retry(5, count=0, limit=60, elapsed=59) and not may_retry(5, 0, 60, 61)
    assert may_retry(5, count=2, limit=60, elapsed=30), "the count is spent, the time is not"
    assert may_retry(1, count=2, limit=60, elapsed=90), "the time is spent, the count is not"
    assert not may_retry(2, count=2, limit=60, elapsed=90), "both reached"

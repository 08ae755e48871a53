"""Once per scheduled slot: the slot of an execution (orchestrator/slot.py), and on the emulator
with the real gcloud: a duplicate execution, a task retry after a failed job, a slot past its
START_DEADLINE, the next slot, and what the job and `status` see."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.conftest import wait_until
from tests.flow import agent_guest_script
from tests.harness import REPO, needs_gcloud, reap

STARTS = "compute.instances.start"


def slot(schedule: str, zone: str, when: str) -> list[str]:
    """slot.py's four fields for the local time `when` in zone (ISO with its offset)."""
    epoch = datetime.fromisoformat(when).timestamp()
    r = subprocess.run(
        [sys.executable, str(REPO / "orchestrator/slot.py"), schedule, zone, str(epoch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout.split()


def test_the_slot_is_the_latest_fire_time_at_or_before_now_and_the_next_is_after():
    assert slot("0 9 * * 1-5", "Asia/Seoul", "2026-12-02T09:00:00+09:00")[1::2] == [
        "2026-12-02T09:00:00+09:00",
        "2026-12-03T09:00:00+09:00",
    ]
    # Friday after the slot: the next is Monday's
    assert slot("0 9 * * 1-5", "Asia/Seoul", "2026-12-04T17:00:00+09:00")[3] == (
        "2026-12-07T09:00:00+09:00"
    )


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # spring forward (2026-03-08): 02:30 does not exist; the slot fires at 03:00 EDT, once
        ("2026-03-08T01:59:00-05:00", "2026-03-07T02:30:00-05:00"),
        ("2026-03-08T03:05:00-04:00", "2026-03-08T03:00:00-04:00"),
        ("2026-03-08T23:00:00-04:00", "2026-03-08T03:00:00-04:00"),
        ("2026-03-09T02:31:00-04:00", "2026-03-09T02:30:00-04:00"),
        # fall back (2026-11-01): 01:00-02:00 comes twice, 02:30 once (EST)
        ("2026-11-01T01:40:00-04:00", "2026-10-31T02:30:00-04:00"),
        ("2026-11-01T01:40:00-05:00", "2026-10-31T02:30:00-04:00"),
        ("2026-11-01T02:45:00-05:00", "2026-11-01T02:30:00-05:00"),
    ],
)
def test_a_0230_schedule_in_new_york_on_both_daylight_saving_days(now, expected):
    assert slot("30 2 * * *", "America/New_York", now)[1] == expected


def test_a_repeated_hour_on_the_fall_back_day_is_one_slot():
    first = slot("30 1 * * *", "America/New_York", "2026-11-01T01:45:00-04:00")
    second = slot("30 1 * * *", "America/New_York", "2026-11-01T01:45:00-05:00")
    assert first[1] == second[1] == "2026-11-01T01:30:00-04:00", "01:30 fires once"


@pytest.mark.parametrize(
    ("schedule", "zone", "message"),
    [
        ("every day", "UTC", "SCHEDULE 'every day' is not a unix-cron schedule"),
        ("0 9 * * *", "Seoul", "TIME_ZONE 'Seoul' is not an IANA time zone"),
        ("0 0 31 2 *", "UTC", "is not a unix-cron schedule"),
    ],
)
def test_a_bad_schedule_or_zone_is_one_line_and_exit_2(schedule, zone, message):
    r = subprocess.run(
        [sys.executable, str(REPO / "orchestrator/slot.py"), schedule, zone],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


# -- the flow ----------------------------------------------------------------------------------

YEARLY = "0 0 1 1 *"  # fired on 2026-01-01 00:00 UTC, and not again while a test runs


def execution(name: str, **extra: str) -> dict[str, str]:
    return {"CLOUD_RUN_EXECUTION": name, "SCHEDULE": YEARLY, **extra}


@pytest.mark.e2e
@needs_gcloud
def test_two_executions_for_one_slot_run_the_job_once_and_the_second_never_starts_the_vm(
    make_flow,
):
    flow = make_flow(job='echo "key=$RUN_KEY slot=$RUN_SLOT"')
    first = flow.entrypoint(**execution("job-exec-1", TIME_ZONE="Asia/Seoul"))
    assert first.returncode == 0, first.stderr
    assert "key=2025-12-31T15:00Z/0 slot=2026-01-01T00:00:00+09:00" in first.stdout
    flow.emu.clear_journal()
    t0 = time.monotonic()
    second = flow.entrypoint(**execution("job-exec-2", TIME_ZONE="Asia/Seoul"))
    took = time.monotonic() - t0
    assert second.returncode == 0, second.stderr
    run_id = flow.runs()[0].split()[1]
    assert re.search(
        rf"slot 2026-01-01T00:00:00\+09:00 already ran on vm-0 \(execution job-exec-1, run "
        rf"{run_id}, succeeded\): not running it again",
        second.stderr,
    ), second.stderr
    assert len(flow.runs()) == 1, "the job ran twice"
    mutating = [
        c for c in flow.emu.calls() if c["api"].split(".")[-1] in ("start", "addAccessConfig")
    ]
    assert mutating == [], "the duplicate touched the VM or its address"
    assert took < 15, f"{took:.1f} s for a duplicate to exit 0"
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("booting", "is being run by another execution, which holds vm-0"),
        ("running", "already ran on vm-0 (execution job-exec-1, run "),
    ],
)
def test_a_duplicate_that_arrives_while_the_first_holds_the_vm_exits_0_not_3(
    make_flow, when, message
):
    flow = make_flow(job="echo started; sleep 6", script=agent_guest_script("sleep 6"))
    proc = flow.popen(**execution("job-exec-1"))
    try:
        assert proc.stdout is not None
        if when == "booting":
            wait_until(lambda: flow.emu.instance("vm-0")["status"] == "RUNNING", 60, "the boot")
        else:
            assert proc.stdout.readline() == "started\n"
        second = flow.entrypoint(**execution("job-exec-2"))
        _, err = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert second.returncode == 0, second.stderr
    assert message in second.stderr, second.stderr
    assert proc.returncode == 0, err
    assert len(flow.runs()) == 1
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
@pytest.mark.parametrize("schedule", [YEARLY, ""])
def test_a_task_retry_after_a_failed_job_does_not_run_it_again(make_flow, schedule):
    flow = make_flow(job="echo 'order placed'; exit 3")
    env = {"CLOUD_RUN_EXECUTION": "job-exec-9", "SCHEDULE": schedule}
    first = flow.entrypoint(**env, CLOUD_RUN_TASK_ATTEMPT="0")
    assert first.returncode == 1, first.stderr
    retry = flow.entrypoint(**env, CLOUD_RUN_TASK_ATTEMPT="1")
    assert retry.returncode == 1, retry.stderr
    run_id = flow.runs()[0].split()[1]
    assert f"already has run {run_id}, which failed after the job had started" in retry.stderr
    assert "order placed" in retry.stdout, "the earlier run's log"
    assert f"run {run_id} failed" in retry.stderr
    assert len(flow.runs()) == 1, "the job ran again after a failure"
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
def test_a_task_retry_runs_a_failed_job_again_with_rerun_failed(make_flow):
    flow = make_flow(job="exit 3")
    env = execution("job-exec-10", RERUN_FAILED="1")
    assert flow.entrypoint(**env).returncode == 1
    retry = flow.entrypoint(**env, CLOUD_RUN_TASK_ATTEMPT="1")
    assert retry.returncode == 1, retry.stderr
    assert "a retry: this execution's run" in retry.stderr
    assert len(flow.runs()) == 2


@pytest.mark.e2e
@needs_gcloud
def test_a_slot_past_its_start_deadline_exits_10_without_starting_the_vm(make_flow):
    flow = make_flow()
    r = flow.entrypoint(**execution("job-exec-11", START_DEADLINE="600"))
    assert r.returncode == 10, r.stderr
    assert "too late for slot 2026-01-01T00:00:00+00:00" in r.stderr
    assert "past START_DEADLINE=600s" in r.stderr
    assert flow.emu.calls(STARTS) == [] and flow.runs() == []
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
def test_the_next_slot_runs_and_status_shows_the_last_and_the_next(make_flow):
    flow = make_flow()
    assert flow.entrypoint(**execution("job-exec-12")).returncode == 0
    monthly = {"CLOUD_RUN_EXECUTION": "job-exec-13", "SCHEDULE": "0 0 1 * *"}
    later = flow.entrypoint(**monthly)
    assert later.returncode == 0, later.stderr
    assert len(flow.runs()) == 2, "a later slot runs"
    status = flow.entrypoint(command=("status",), **monthly)
    assert status.returncode == 0, status.stderr
    run_id = flow.runs()[1].split()[1]
    assert f"(execution job-exec-13, run {run_id}, succeeded)" in status.stdout
    assert "slot      next: " in status.stdout
    missed = flow.entrypoint(command=("status",), SCHEDULE="0 0 1 2 *")  # 2026-02-01: no run
    assert "WARNING slot 2026-02-01T00:00:00+00:00 passed with no run on vm-0" in missed.stderr


@pytest.mark.e2e
@needs_gcloud
def test_without_a_schedule_one_line_says_duplicates_are_not_detected(make_flow):
    flow = make_flow()
    r = flow.entrypoint(CLOUD_RUN_EXECUTION="job-exec-14")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("SCHEDULE is not set: a duplicate execution") == 1
    assert "vm-job-slot" not in flow.emu.instance("vm-0")["labels"]


@pytest.mark.e2e
@needs_gcloud
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCHEDULE": "every day"}, "SCHEDULE 'every day' is not a unix-cron schedule"),
        ({"SCHEDULE": YEARLY, "TIME_ZONE": "Seoul"}, "TIME_ZONE 'Seoul' is not an IANA"),
        ({"START_DEADLINE": "60"}, "START_DEADLINE needs SCHEDULE"),
        ({"SCHEDULE": YEARLY, "RERUN_FAILED": "yes"}, "RERUN_FAILED must be 0 or 1"),
    ],
)
def test_bad_slot_settings_are_exit_2_before_any_cloud_call(make_flow, env, message):
    flow = make_flow()
    r = flow.entrypoint(**env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert flow.emu.calls() == []

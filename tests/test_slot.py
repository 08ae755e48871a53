"""Once per scheduled slot: the slot of an execution (orchestrator/slot.py), and on the emulator
with the real gcloud: a duplicate execution, a task retry after a failed job, a slot past its
START_DEADLINE, the next slot, and what the job and `status` see."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.flow import ZONE, agent_guest_script
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


def load_slot_module():
    spec = importlib.util.spec_from_file_location("slot", REPO / "orchestrator" / "slot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SLOT = load_slot_module()
# 2026's daylight-saving changes: New York 03-08 07:00Z and 11-01 06:00Z, Berlin 03-29 01:00Z and
# 10-25 01:00Z
CHANGES = {
    "America/New_York": ["2026-03-08T07:00:00+00:00", "2026-11-01T06:00:00+00:00"],
    "Europe/Berlin": ["2026-03-29T01:00:00+00:00", "2026-10-25T01:00:00+00:00"],
}
SWEPT = ["*/5 * * * *", "0 * * * *", "30 1 * * *", "30 2 * * *", "0 9 * * 1-5"]


@pytest.mark.parametrize("schedule", SWEPT)
@pytest.mark.parametrize("zone", sorted(CHANGES))
def test_every_instant_around_both_daylight_saving_changes_has_a_slot_before_it_and_a_next_after(
    zone, schedule
):
    """Minute by minute (at :30 s) from 3 h before to 9 h after each of 2026's two changes: the
    slot is at or before now, the next after it, the next of the slot is after now (the slot is
    the latest fire time, in absolute time), and the slots seen are one increasing sequence."""
    for change in CHANGES[zone]:
        start = datetime.fromisoformat(change) - timedelta(hours=3)
        seen = []
        for minute in range(12 * 60):
            now = start + timedelta(minutes=minute, seconds=30)
            latest, following = SLOT.slot_and_next(schedule, zone, now.timestamp())
            assert latest <= now < following, (zone, schedule, now, latest, following)
            _, after_latest = SLOT.slot_and_next(schedule, zone, latest.timestamp())
            assert after_latest > now, (
                f"{schedule} in {zone} at {now}: slot {latest}, whose next ({after_latest}) is "
                "not after now: the slot is not the latest fire time"
            )
            latest = latest.astimezone(UTC)  # a zone's own times compare by wall clock
            if not seen or seen[-1] != latest:
                assert not seen or latest > seen[-1], (zone, schedule, now, seen[-1], latest)
                seen.append(latest)


def test_an_execution_in_the_repeated_hour_gets_the_slot_of_the_second_pass():
    # 2026-11-01T06:05:30Z is 01:05:30 EST, the second 01:05 of the day in New York
    latest, following = SLOT.slot_and_next(
        "*/5 * * * *",
        "America/New_York",
        datetime.fromisoformat("2026-11-01T06:05:30Z").timestamp(),
    )
    assert latest.isoformat() == "2026-11-01T01:05:00-05:00", "not the first 01:05, an hour ago"
    assert following.isoformat() == "2026-11-01T01:10:00-05:00"


def test_an_hourly_schedule_fires_at_both_passes_of_the_repeated_hour_and_a_fixed_one_once():
    def slots(schedule: str, hours: int) -> list[str]:
        start = datetime.fromisoformat("2026-11-01T04:30:00Z")
        return sorted(
            {
                SLOT.slot_and_next(
                    schedule, "America/New_York", (start + timedelta(minutes=m)).timestamp()
                )[0].isoformat()
                for m in range(0, hours * 60, 10)
            }
        )

    assert slots("0 * * * *", 3) == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",  # 06:00Z: its run is not lost
        "2026-11-01T02:00:00-05:00",
    ]
    assert slots("0 1 * * *", 3) == [
        "2026-10-31T01:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
    ], "a fixed-time schedule fires once, at the first pass"


@pytest.mark.parametrize(
    ("schedule", "zone", "words"),
    [
        ("*/5 * * * *", "America/New_York", "those times do not fire"),
        ("30 2 * * *", "America/New_York", "the clock skips"),
        ("30 2 * * *", "Europe/Berlin", "it fires at 03:00 instead"),
        ("0 9 * * 1-5", "America/New_York", None),
        ("*/5 * * * *", "UTC", None),
        ("0 9 * * 1-5", "Asia/Seoul", None),
    ],
)
def test_a_schedule_that_fires_in_a_skipped_or_repeated_hour_is_named_and_no_other(
    schedule, zone, words
):
    december = str(datetime.fromisoformat("2026-12-05T00:00:00Z").timestamp())  # next: spring
    r = subprocess.run(
        [sys.executable, str(REPO / "orchestrator/slot.py"), schedule, zone, december],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = r.stdout.splitlines()
    if words is None:
        assert len(lines) == 1, r.stdout
    else:
        assert len(lines) == 2 and lines[1].startswith(f"dst: in {zone}, ") and words in lines[1]


def config_only(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """entrypoint.sh's functions up to COMMAND, with a configuration and no cloud (no gcloud on
    PATH is needed: nothing before the claim calls one), in the project's environment (its
    python3 first on PATH, as `uv run` puts it, however pytest itself was started)."""
    settings = {
        "PROJECT_ID": "p",
        "REGION": "asia-northeast3",
        "ZONE": "asia-northeast3-c",
        "INSTANCE": "vm-0",
        "STATIC_NAME": "ip-0",
        "AGENT_TOKEN": "test-token-0123456789abcdef",
        **env,
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_RUN_", "SCHEDULE"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}"
    return subprocess.run(
        ["bash", "-c", f'source "$1"; {command}', "bash", str(REPO / "entrypoint.sh")],
        env={**base, **settings},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("zone", "warned"), [("America/New_York", True), ("UTC", False), ("Asia/Seoul", False)]
)
def test_the_daylight_saving_warning_is_said_once_at_configuration(zone, warned):
    r = config_only("check_config; slot_setup", SCHEDULE="*/5 * * * *", TIME_ZONE=zone)
    assert r.returncode == 0, r.stderr
    count = r.stderr.count("changes its clock for daylight saving at a time SCHEDULE")
    assert count == (1 if warned else 0), r.stderr
    if warned:
        assert "recommends UTC" in r.stderr


def test_a_test_run_takes_a_key_of_its_own_not_the_slots():
    r = config_only(
        'check_config; slot_setup; echo "KEY=$RUN_KEY SLOT=$RUN_SLOT LABEL=$SLOT_LABEL"',
        SCHEDULE=YEARLY,
        MODE="test",
        CLOUD_RUN_EXECUTION="trader-check",
    )
    assert r.returncode == 0, r.stderr
    assert "KEY=test/trader-check/0 SLOT= LABEL=" in r.stdout, r.stdout
    assert "MODE=test: a dry run takes no slot" in r.stderr


def test_long_execution_names_each_get_a_label_value_of_their_own():
    job = "a-trading-job-with-a-rather-long-name-for-its-own-good-and-more"  # 63 characters
    names = set()
    for suffix in ("ab1cd", "zz9yy"):
        r = config_only("slot_execution", CLOUD_RUN_EXECUTION=f"{job}-{suffix}")
        assert r.returncode == 0, r.stderr
        assert re.fullmatch(r"[a-z0-9_-]{1,63}", r.stdout), r.stdout
        names.add(r.stdout)
    assert len(names) == 2, f"two executions share a label value: {names}"
    short = config_only("slot_execution", CLOUD_RUN_EXECUTION="trader-ab1cd")
    assert short.stdout == "trader-ab1cd", "a short name stays readable"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLOUD_RUN_TASK_COUNT": "3"}, "the job has 3 tasks (CLOUD_RUN_TASK_COUNT) but INSTANCE"),
        (
            {"INSTANCE": "", "INSTANCES": "vm-0,vm-1", "STATIC_NAME": "ip-0,ip-1",
             "CLOUD_RUN_TASK_COUNT": "3"},
            "the job has 3 tasks (CLOUD_RUN_TASK_COUNT) but INSTANCES names 2 VMs",
        ),
    ],
)  # fmt: skip
def test_more_tasks_than_vms_is_a_configuration_error_naming_the_setting(env, message):
    r = subprocess.run(
        ["bash", str(REPO / "entrypoint.sh")],
        env={**os.environ, **env_of(env)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "--tasks" in r.stderr, r.stderr


def env_of(extra: dict[str, str]) -> dict[str, str]:
    env = {
        "PROJECT_ID": "p",
        "REGION": "asia-northeast3",
        "ZONE": "asia-northeast3-c",
        "INSTANCE": "vm-0",
        "STATIC_NAME": "ip-0",
        "AGENT_TOKEN": "test-token-0123456789abcdef",
        **extra,
    }
    return {k: v for k, v in env.items() if v}


def test_by_hand_without_cronsim_it_says_what_is_missing_and_how_to_run_it(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        **env_of({"SCHEDULE": YEARLY}),
        "PATH": f"{bare / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    r = subprocess.run(
        ["bash", str(REPO / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "cronsim is not installed" in r.stderr and "uv run ./entrypoint.sh" in r.stderr


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


# -- the scheduled run at its edges (issue 26) ---------------------------------------------------

FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(
    FAKETIME is None,
    reason="faketime (Debian's package faketime) is not installed: it runs a retry minutes late",
)


def this_minute() -> str:
    """A yearly schedule that fired at the start of this minute (UTC): a slot just begun."""
    now = datetime.now(UTC)
    return f"{now.minute} {now.hour} {now.day} {now.month} *"


def late(seconds: int) -> tuple[str, ...]:
    """What runs entrypoint.sh `seconds` later than now, by its own clock alone."""
    assert FAKETIME is not None
    return (FAKETIME, "-f", f"+{seconds}s")


@pytest.mark.e2e
@needs_gcloud
def test_a_dry_run_takes_no_slot_and_the_slots_retry_still_runs_the_job(make_flow):
    """The scheduled execution fails before its run (no capacity, exit 9); the operator checks
    the VM with MODE=test and the job's settings; the execution's retry runs the job for real,
    and a later run of the slot by hand finds it ran."""
    flow = make_flow(job='echo "mode=${DRY_RUN:-0} key=$RUN_KEY"')
    scheduled = execution("job-exec-20")
    flow.emu.stockout(ZONE)
    failed = flow.entrypoint(**scheduled, BOOT_TIMEOUT="8")
    assert failed.returncode == 9, failed.stderr
    flow.emu.http.delete("/_emulator/stockouts").raise_for_status()
    dry = flow.entrypoint(SCHEDULE=YEARLY, MODE="test")
    assert dry.returncode == 0, dry.stderr
    assert "mode=1 key=test/manual-" in dry.stdout, dry.stdout
    assert "vm-job-slot" not in flow.emu.instance("vm-0")["labels"], "the dry run wrote a record"
    retry = flow.entrypoint(**scheduled, CLOUD_RUN_TASK_ATTEMPT="1")
    assert retry.returncode == 0, retry.stderr
    assert "mode=0 key=2026-01-01T00:00Z/0" in retry.stdout, "the slot's real run"
    assert [line.split()[0] for line in flow.runs()] == ["1", "0"], "one dry run, one real run"
    by_hand = flow.entrypoint(SCHEDULE=YEARLY)
    assert by_hand.returncode == 0 and "already ran on vm-0" in by_hand.stderr, by_hand.stderr
    assert len(flow.runs()) == 2
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
@needs_faketime
def test_a_retry_with_rerun_failed_past_the_deadline_exits_10_and_does_not_run_the_job(make_flow):
    flow = make_flow(job="echo 'order placed'; exit 3")
    env = execution("job-exec-21", SCHEDULE=this_minute(), START_DEADLINE="120", RERUN_FAILED="1")
    first = flow.entrypoint(**env)
    assert first.returncode == 1, first.stderr
    retry = flow.entrypoint(wrap=late(300), **env, CLOUD_RUN_TASK_ATTEMPT="1")
    assert retry.returncode == 10, retry.stderr
    assert "too late for slot" in retry.stderr
    assert len(flow.runs()) == 1, "the retry started the job again after START_DEADLINE"
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
@needs_faketime
def test_a_retry_too_late_for_its_slot_cleans_up_what_its_killed_attempt_left(make_flow):
    """Attempt 1 is killed (SIGKILL) while the VM boots: the VM runs, the address is attached,
    the claim is held. Attempt 2 comes past START_DEADLINE: it takes its own claim back first,
    then exits 10, and its cleanup stops the VM, detaches the address and gives the claim
    back, so the VM does not bill until its idle shutdown and the next slots find it free."""
    flow = make_flow(script=agent_guest_script("sleep 8"))
    env = execution("job-exec-22", SCHEDULE=this_minute(), START_DEADLINE="120")
    first = flow.popen(**env)
    try:
        wait_until(lambda: flow.emu.instance("vm-0")["status"] == "RUNNING", 60, "the boot")
    finally:
        reap(first)  # SIGKILL to the attempt and all its children, as Cloud Run's kill
    left = flow.emu.instance("vm-0")
    assert left["status"] == "RUNNING" and left["access_configs"], left
    assert left["labels"].get("vm-job-owner"), "attempt 1 held the claim"
    retry = flow.entrypoint(wrap=late(300), **env, CLOUD_RUN_TASK_ATTEMPT="1")
    assert retry.returncode == 10, retry.stderr
    assert "is this task's, from an earlier attempt: taking it back" in retry.stderr
    assert "the VM RUNNING, address" in retry.stderr, "it says what it found"
    assert flow.runs() == []
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
def test_executions_of_a_job_with_a_long_name_each_run_their_own_slot(make_flow):
    """Cloud Run names an execution after its job (up to 63 characters) and adds 6: with a job
    name of 62 or more, two executions cut to a label's 63 characters were one, and a new slot's
    execution was taken for a retry of the last one (its slot never ran)."""
    flow = make_flow(job='echo "ran $RUN_KEY"')
    job = "nightly-rebalance-of-the-whole-trading-book-across-all-venues-x"  # 63 characters
    first = flow.entrypoint(CLOUD_RUN_EXECUTION=f"{job}-ab1cd", SCHEDULE=YEARLY)
    assert first.returncode == 0, first.stderr
    second = flow.entrypoint(
        CLOUD_RUN_EXECUTION=f"{job}-zz9yy", SCHEDULE="0 0 1 * *", CLOUD_RUN_TASK_ATTEMPT="0"
    )
    assert second.returncode == 0, second.stderr
    assert "a retry" not in second.stderr, second.stderr
    assert len(flow.runs()) == 2, "the second slot did not run"
    flow.assert_cleaned_up()


@pytest.mark.e2e
@needs_gcloud
def test_a_vm_with_no_room_for_the_flows_labels_is_refused_at_the_claim_touching_nothing(
    make_flow,
):
    flow = make_flow()
    flow.emu.set_instance(ZONE, "vm-0", labels={f"team-{n}": "x" for n in range(60)})
    flow.emu.clear_journal()
    r = flow.entrypoint(**execution("job-exec-23"))
    assert r.returncode == 5, r.stderr
    assert "vm-0 has 60 labels of its own, and this flow needs room for 5 more" in r.stderr
    compute = [c["api"] for c in flow.emu.calls() if c["api"].startswith("compute.")]
    assert compute == ["compute.instances.get"], "it touched things"
    assert "vm-job-owner" not in flow.emu.instance("vm-0")["labels"]

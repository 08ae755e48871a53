"""`entrypoint.sh check [SLOT]` (orchestrator/check.sh) in the fast tier: which slot it judges,
and its verdict for every state the VM's record of a slot can be in, on ordinary and
daylight-saving days; and the summary line every run and check ends with. The Compute API is a
function that answers a VM's labels: no gcloud, no cloud."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import pytest

from tests.test_slot import config_only

NY = "America/New_York"


def epoch(when: str) -> int:
    return int(datetime.fromisoformat(when).timestamp())


def label(when: str) -> str:
    return datetime.fromisoformat(when).astimezone(UTC).strftime("%Y%m%dt%H%Mz")


def shell(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """entrypoint.sh's functions, then COMMAND, with test_slot's configuration (no cloud), a
    weekday 09:00 schedule in New York and the timeouts the window is made of."""
    return config_only(command, **{**SETTINGS, **env})


SETTINGS = {
    "REGION": "us-east4",
    "ZONE": "us-east4-a",
    "SCHEDULE": "0 9 * * 1-5",
    "TIME_ZONE": NY,
    "START_DEADLINE": "900",
    "RUN_TIMEOUT": "3600",
    "STOP_TIMEOUT": "180",
}


def record(slot: str | None, state: str = "succeeded", holder: str = "") -> dict[str, str]:
    """A VM's labels: the slot record (slot.sh) and the claim (claim.sh)."""
    labels = {"env": "prod"}
    if slot is not None:
        labels |= {
            "vm-job-slot": label(slot),
            "vm-job-slot-run": "0123456789abcdef0123456789abcdef",
            "vm-job-slot-execution": "vm-job-runner-abcde",
            "vm-job-slot-state": state,
        }
    if holder:
        labels["vm-job-owner"] = holder
    return labels


def verdict(now: str, labels: dict[str, str], slot: str = "", **env: str) -> tuple[int, str, str]:
    """(CHECK_CODE, the slot judged, its words) for the labels at time `now`."""
    holder = labels.get("vm-job-owner", "")
    others = ",".join(f'"{k}":"{v}"' for k, v in labels.items() if k != "vm-job-owner")
    r = shell(
        f"check_config check; check_settings; check_target {epoch(now)} '{slot}'; "
        f"HOLDER='{holder}' OTHER_LABELS='{others}'; slot_verdict {epoch(now)}; "
        'printf "%s|%s|%s" "$CHECK_CODE" "$RUN_SLOT" "$CHECK_WORDS"',
        **env,
    )
    assert r.returncode == 0, r.stderr
    code, judged, words = r.stdout.split("|", 2)
    return int(code), judged, words


def claim(until: str, slot: str) -> str:
    return f"{epoch(until)}-0a1b2c3d-{label(slot)}"


MON = "2026-11-30T09:00:00-05:00"  # a Monday's slot
CHECKED = "2026-11-30T09:17:00-05:00"  # START_DEADLINE (15 min) + CHECK_MARGIN (1 min) later


def test_the_slot_judged_is_the_latest_due_before_now_less_the_deadline_and_margin():
    assert verdict(CHECKED, record(MON))[1] == "2026-11-30T09:00:00-05:00"
    # before the deadline and margin have passed, it is still Friday's
    assert verdict("2026-11-30T09:15:30-05:00", record(MON))[1] == "2026-11-27T09:00:00-05:00"
    # a weekend: Monday's check at 08:00 judges Friday's slot, 71 hours on
    assert verdict("2026-11-30T08:00:00-05:00", record(None))[1] == "2026-11-27T09:00:00-05:00"


@pytest.mark.parametrize(
    ("state", "code", "words"),
    [
        ("succeeded", 0, "succeeded (execution vm-job-runner-abcde, run 0123"),
        ("failed", 12, "its run ended failed"),
        ("cancelled", 12, "its run ended cancelled"),
        ("interrupted", 12, "its run ended interrupted"),
        ("timed-out", 12, "its run ended timed-out"),
        ("vm-gone", 12, "its run ended vm-gone"),
        ("unknown", 12, "its run ended unknown"),
    ],
)
def test_a_slot_that_ran_is_ok_only_when_it_succeeded(state, code, words):
    got = verdict(CHECKED, record(MON, state))
    assert got[0] == code and got[2].startswith(words), got


def test_a_started_run_whose_execution_holds_the_vm_is_under_way_within_its_window():
    held = record(MON, "started", claim("2026-11-30T10:30:00-05:00", MON))
    code, _, words = verdict(CHECKED, held)
    assert code == 0 and words.startswith("under way"), words


def test_a_started_run_whose_claim_lapsed_was_cut_off():
    lapsed = record(MON, "started", claim("2026-11-30T09:10:00-05:00", MON))
    code, _, words = verdict(CHECKED, lapsed)
    assert code == 12 and words.startswith("cut off"), words
    code, _, words = verdict(CHECKED, record(MON, "started"))
    assert code == 12 and words.startswith("cut off"), words


def test_a_run_still_started_past_its_window_is_missed_even_with_its_claim_held():
    # window: 900 + 3600 + 180 + 60 s after 09:00 = 10:19:00
    held = record(MON, "started", claim("2026-11-30T12:00:00-05:00", MON))
    code, _, words = verdict("2026-11-30T10:19:30-05:00", held, slot=MON)
    assert code == 12 and words.startswith("still running past its window"), words
    assert "2026-11-30T10:19:00-0500" in words
    assert verdict("2026-11-30T10:18:30-05:00", held, slot=MON)[0] == 0


def test_a_slot_that_never_started_is_missed_and_the_last_slot_that_ran_is_named():
    code, _, words = verdict(CHECKED, record("2026-11-27T09:00:00-05:00"))
    assert code == 12 and words.startswith("never started: the last slot that ran"), words
    assert "2026-11-27T14:00Z" in words
    code, _, words = verdict(CHECKED, record(None))
    assert code == 12 and words == "never started: no slot has run on vm-0"


def test_an_execution_holding_the_vm_for_the_slot_without_a_started_run_is_missed():
    booting = record("2026-11-27T09:00:00-05:00", holder=claim("2026-11-30T10:30:00-05:00", MON))
    code, _, words = verdict(CHECKED, booting)
    assert code == 12 and "an execution holds vm-0 for it" in words, words


def test_a_record_replaced_by_a_later_slot_cannot_be_confirmed():
    code, _, words = verdict("2026-12-01T09:30:00-05:00", record("2026-12-01T09:00:00-05:00"),
                             slot=MON)  # fmt: skip
    assert code == 12 and words.startswith("cannot be confirmed"), words


def test_a_slot_given_by_hand_before_its_deadline_may_still_start():
    code, _, words = verdict("2026-11-30T09:05:00-05:00", record(None), slot=MON)
    assert code == 0 and words.startswith("not started yet, and it may still start"), words


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("2026-11-30T09:01:00-05:00", "is not a slot of SCHEDULE '0 9 * * 1-5'"),
        ("2026-12-01T09:00:00-05:00", "is in the future"),
        ("yesterday-ish", "is not a time"),
    ],
)
def test_a_bad_slot_argument_is_exit_2(given, message):
    r = shell(f"check_config check; check_settings; check_target {epoch(CHECKED)} '{given}'")
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_slot_label_is_taken_as_the_slot():
    assert verdict(CHECKED, record(MON), slot=label(MON))[1] == "2026-11-30T09:00:00-05:00"


def test_check_without_a_schedule_is_a_configuration_error():
    r = shell("main check", SCHEDULE="", START_DEADLINE="")
    assert r.returncode == 2 and "check needs SCHEDULE" in r.stderr, r.stderr


# -- daylight saving: New York, 2026-03-08 (02:00 -> 03:00) and 2026-11-01 (02:00 -> 01:00) --


@pytest.mark.parametrize(
    ("schedule", "now", "slot"),
    [
        # 02:30 is skipped on the spring-forward day: the slot fires at 03:00 EDT
        ("30 2 * * *", "2026-03-08T03:16:30-04:00", "2026-03-08T03:00:00-04:00"),
        ("30 2 * * *", "2026-03-08T03:15:30-04:00", "2026-03-07T02:30:00-05:00"),
        ("30 2 * * *", "2026-03-09T02:46:30-04:00", "2026-03-09T02:30:00-04:00"),
        # 01:30 comes twice on the fall-back day: a fixed-time schedule's slot is the first
        ("30 1 * * *", "2026-11-01T01:46:30-04:00", "2026-11-01T01:30:00-04:00"),
        ("30 1 * * *", "2026-11-01T01:46:30-05:00", "2026-11-01T01:30:00-04:00"),
        # an hourly one fires at both 01:00 EDT and 01:00 EST
        ("0 * * * *", "2026-11-01T01:16:30-04:00", "2026-11-01T01:00:00-04:00"),
        ("0 * * * *", "2026-11-01T01:16:30-05:00", "2026-11-01T01:00:00-05:00"),
    ],
)
def test_on_the_daylight_saving_days_the_slot_judged_is_the_one_the_run_recorded(
    schedule, now, slot
):
    code, judged, _ = verdict(now, record(slot), SCHEDULE=schedule)
    assert judged == slot
    assert code == 0, "the record the run wrote (its slot in UTC) is the slot check judges"


def test_on_the_fall_back_day_the_second_hourly_slot_is_not_the_first_ones_record():
    first = "2026-11-01T01:00:00-04:00"
    code, judged, words = verdict("2026-11-01T01:16:30-05:00", record(first), SCHEDULE="0 * * * *")
    assert judged == "2026-11-01T01:00:00-05:00"
    assert code == 12 and words.startswith("never started: the last slot that ran"), words


# -- the whole command, and the summary line -----------------------------------------------

FAKE_API = """
need_token() {{ :; }}
compute_api() {{ API_CODE=200 API_CURL_ERROR=""; API_BODY='{body}'; }}
"""


def run_check(labels: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    body = json.dumps({"status": "TERMINATED", "labels": labels, "labelFingerprint": "x"})
    return shell(FAKE_API.format(body=body) + "main check " + " ".join(args), **env)


def test_check_of_a_failed_slot_exits_12_naming_the_slot_and_its_record():
    r = run_check(record(MON, "failed"), MON)
    assert r.returncode == 12, r.stderr
    assert r.stdout == "slot 2026-11-30T09:00:00-05:00: missed: its run ended failed " \
        "(execution vm-job-runner-abcde, run 0123456789abcdef0123456789abcdef)\n"  # fmt: skip
    assert "check: slot 2026-11-30T09:00:00-05:00 missed" in r.stderr
    assert "summary: outcome=slot-missed exit=12" in r.stderr


def test_check_of_a_slot_that_succeeded_exits_0_and_touches_nothing():
    r = run_check(record(MON), MON)
    assert r.returncode == 0, r.stderr
    assert "succeeded" in r.stdout
    assert "summary: outcome=slot-ok exit=0" in r.stderr
    assert "cleanup: stopping" not in r.stderr and "detached" not in r.stderr


def test_on_cloud_run_the_summary_is_one_json_entry_with_labels_to_filter_on():
    r = run_check(record(MON, "failed"), MON, CLOUD_RUN_JOB="vm-job-runner")
    assert r.returncode == 12
    entries = [json.loads(line) for line in r.stderr.splitlines()]
    last = entries[-1]
    assert last["severity"] == "INFO", "a record, not a second ERROR line"
    assert last["logging.googleapis.com/labels"] == {
        "slot": label(MON),
        "run_key": "2026-11-30T14:00Z/0",
        "instance": "vm-0",
    }
    summary = last["summary"]
    assert summary["outcome"] == "slot-missed" and summary["exit_code"] == 12
    assert summary["slot"] == "2026-11-30T09:00:00-05:00"
    assert summary["vm_billed_seconds"] == 0
    assert set(summary["steps"]) == {"check"}

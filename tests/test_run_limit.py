"""The guard that does not depend on the guest: scheduling.maxRunDuration with
instanceTerminationAction=STOP. The emulator stops a VM whose limit passes, as Compute Engine
does (the timer starts at each entry to RUNNING); the orchestrator warns once per run when the
VM has none or one shorter than the run may take, and `status` shows it."""

from __future__ import annotations

import pytest

from tests.flow import ZONE
from tests.harness import needs_gcloud

pytestmark = [pytest.mark.e2e, needs_gcloud]
Z = f"--zone={ZONE}"


def set_limit(flow, seconds: int) -> None:
    r = flow.emu.gcloud(
        "compute", "instances", "set-scheduling", "vm-0", Z,
        f"--max-run-duration={seconds}s", "--instance-termination-action=STOP",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_compute_engine_stops_a_vm_once_its_max_run_duration_passes_at_every_start(make_flow):
    flow = make_flow()
    set_limit(flow, 3)
    for _ in (1, 2):
        assert flow.emu.gcloud("compute", "instances", "start", "vm-0", Z).returncode == 0
        flow.emu.wait_status("vm-0", "TERMINATED", timeout=30)
    events = [e for e in flow.emu.journal() if e["kind"] == "event"]
    running = [e["time"] for e in events if e.get("status") == "RUNNING"]
    limits = [e["time"] for e in events if e.get("event") == "max_run_duration"]
    assert len(running) == len(limits) == 2, events
    for began, ended in zip(running, limits, strict=True):
        assert 2.9 < ended - began < 4, f"stopped {ended - began:.2f} s after RUNNING, limit 3 s"


def test_the_scheduling_of_a_running_vm_is_refused(make_flow):
    flow = make_flow()
    assert flow.emu.gcloud("compute", "instances", "start", "vm-0", Z).returncode == 0
    r = flow.emu.gcloud(
        "compute", "instances", "set-scheduling", "vm-0", Z,
        "--max-run-duration=1h", "--instance-termination-action=STOP",
    )  # fmt: skip
    assert r.returncode == 1 and "is not ready" in r.stderr, r.stderr


def test_a_vm_without_a_guard_is_one_warning_per_run_and_status_shows_it(make_flow):
    flow = make_flow()
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("has no guard of its own") == 1, r.stderr
    assert "--max-run-duration=" in r.stderr and "--instance-termination-action=STOP" in r.stderr
    status = flow.entrypoint(command=("status",))
    assert status.returncode == 0, status.stderr
    assert "guard     none: no scheduling.maxRunDuration" in status.stdout


def test_a_guard_sized_from_the_timeouts_is_no_warning_and_status_shows_it(make_flow):
    flow = make_flow()
    set_limit(flow, 60 + 120 + 60 + 60)  # BOOT_TIMEOUT + RUN_TIMEOUT + STOP_TIMEOUT + 60
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "no guard of its own" not in r.stderr and "maxRunDuration" not in r.stderr, r.stderr
    status = flow.entrypoint(command=("status",))
    assert (
        "guard     scheduling.maxRunDuration=300s, instanceTerminationAction=STOP" in status.stdout
    )


def test_a_guard_shorter_than_the_run_is_a_warning_and_stops_the_vm_under_the_job(make_flow):
    flow = make_flow(job="echo started; sleep 120")
    set_limit(flow, 10)
    r = flow.entrypoint()
    assert r.returncode == 8, r.stderr
    assert "scheduling.maxRunDuration=10s is shorter than this run may take" in r.stderr
    assert "a VM whose maxRunDuration of 10s has passed too" in r.stderr
    assert [e for e in flow.emu.journal() if e.get("event") == "max_run_duration"]
    flow.assert_cleaned_up()

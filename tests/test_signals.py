"""The job's stop, whichever way it comes (the orchestrator's SIGTERM, the VM stopped under it),
and the cleanup after a signal: one SIGTERM to each of the job's processes, its closing lines on
stdout, the whole cleanup within Cloud Run's 10 s, and what it could not finish left for the
next execution. On the emulator, with the real gcloud."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.flow import ZONE, Flow
from tests.harness import needs_gcloud, reap

pytestmark = [pytest.mark.e2e, needs_gcloud]

YEARLY = "0 0 1 1 *"


def closing_job(tmp: Path, close_for: float = 1.5) -> tuple[str, Path]:
    """A job whose SIGTERM handler notes each call in a file (a handler that closes positions
    must run once), prints while it closes for close_for seconds (within the flow's KILL_GRACE
    of 2 s), and exits; and that file."""
    handled = tmp / "handled"
    script = tmp / "job.py"
    script.write_text(
        textwrap.dedent(f"""\
        import os, signal, sys, time

        def close(signum, frame):
            with open({str(handled)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            print("closing orders", flush=True)
            time.sleep({close_for})
            print("orders closed", flush=True)
            sys.exit(1)

        signal.signal(signal.SIGTERM, close)
        print("started", flush=True)
        while True:
            time.sleep(1)
        """)
    )
    return f"{sys.executable} -u {script}", handled


def handler_runs(handled: Path) -> list[str]:
    return handled.read_text().splitlines() if handled.exists() else []


def slot_state(flow: Flow) -> str | None:
    assert flow.emu is not None
    return flow.emu.instance("vm-0")["labels"].get("vm-job-slot-state")


def test_a_sigterm_cancels_first_prints_the_jobs_closing_lines_and_runs_its_handler_once(
    make_flow, tmp_path
):
    job, handled = closing_job(tmp_path)
    flow = make_flow(job=job)
    proc = flow.popen(CLOUD_RUN_EXECUTION="exec-term", SCHEDULE=YEARLY)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        reap(proc)
    assert proc.returncode == 143, err
    assert took < 10, f"the cleanup after SIGTERM took {took:.1f} s: Cloud Run's SIGKILL is at 10"
    assert "closing orders\n" in out and "orders closed\n" in out, (
        f"the job's lines while it closed are lost: {out!r}\n{err}"
    )
    assert "could not cancel" not in err, err
    stop = err.index("cleanup: stopping vm-0")
    assert err.index("cancelled (its record says cancelled)") < stop, "cancel first, then stop"
    assert len(handler_runs(handled)) == 1, f"the handler ran {handler_runs(handled)}"
    assert slot_state(flow) == "cancelled", "the slot's record says how the run ended"
    flow.assert_cleaned_up(stopping_for=30)
    assert len(handler_runs(handled)) == 1, "the VM's stop must not signal the job again"


def test_a_vm_stopped_under_the_job_gives_its_handler_one_run_and_the_slot_says_so(
    make_flow, tmp_path
):
    job, handled = closing_job(tmp_path, close_for=1)
    flow = make_flow(job=job)
    proc = flow.popen(CLOUD_RUN_EXECUTION="exec-stopped", SCHEDULE=YEARLY)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        stopped = flow.emu.gcloud("compute", "instances", "stop", "vm-0", f"--zone={ZONE}")
        assert stopped.returncode == 0, stopped.stderr
        _, err = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert proc.returncode == 8, err
    assert handler_runs(handled) and len(handler_runs(handled)) == 1, (
        f"the job's handler ran {len(handler_runs(handled))} times on the VM's stop"
    )
    assert slot_state(flow) == "vm-gone"
    flow.assert_cleaned_up()


def test_run_timeout_records_the_slot_as_timed_out(make_flow):
    flow = make_flow(job="sleep 300")
    r = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-slow", SCHEDULE=YEARLY, RUN_TIMEOUT="3")
    assert r.returncode == 4, r.stderr
    assert slot_state(flow) == "timed-out", "not left at 'started'"
    flow.assert_cleaned_up()


def test_a_cleanup_cut_short_by_its_budget_leaves_a_lapsed_claim_the_next_execution_finishes(
    make_flow, tmp_path
):
    """deleteAccessConfig takes 12 s: within the 9 s a signal leaves, after the cancel and the
    stop, the detach cannot be confirmed; the claim is left lapsed (not held for hours), and
    the next execution takes it over, says so, and finishes what was left."""
    quick = tmp_path / "quick"
    flow = make_flow(
        job=f"trap 'exit 1' TERM; echo started; [ -e {quick} ] || {{ sleep 60 & wait; }}"
    )
    flow.emu.fault("compute.instances.deleteAccessConfig", delay=12)
    first = flow.popen(CLOUD_RUN_EXECUTION="exec-cut")
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == "started\n"
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        reap(first)
    assert first.returncode == 143, err
    assert took < 10, f"{took:.1f} s: every call must be bounded by what is left of the 10 s: {err}"
    assert "left vm-0's claim lapsed" in err, err
    claim = flow.emu.instance("vm-0")["labels"].get("vm-job-owner", "")
    assert claim and int(claim.split("-")[0]) <= time.time(), f"the claim is not lapsed: {claim}"
    flow.emu.wait_status("vm-0", "TERMINATED", timeout=30)
    quick.touch()
    second = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-after")
    assert second.returncode == 0, second.stderr
    assert "lapsed (its execution was killed, or its cleanup could not finish)" in second.stderr
    assert len(flow.runs()) == 2
    flow.assert_cleaned_up()


def test_a_claim_write_without_an_answer_cannot_land_after_the_cleanup(make_flow):
    """SIGTERM while the claim's setLabels is on its way (it lands 6 s later): the cleanup,
    finding no claim yet, renews the labels' fingerprint, so the late write is refused and no
    claim is left that nobody gives back."""
    flow = make_flow()
    flow.emu.fault("compute.instances.setLabels", delay=6)
    proc = flow.popen(CLOUD_RUN_EXECUTION="exec-inflight")
    try:
        wait_until(lambda: flow.emu.calls("compute.instances.get"), 60, "the claim's read")
        time.sleep(1)  # the setLabels is on its way, held by the fault
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == 143, err
    assert "its labels' fingerprint is renewed" in err, err
    wait_until(
        lambda: len(flow.emu.calls("compute.instances.setLabels")) >= 2, 15, "the late write"
    )
    late = flow.emu.calls("compute.instances.setLabels")
    assert any(c["status"] == 412 for c in late), f"the late write was not refused: {late}"
    assert "vm-job-owner" not in flow.emu.instance("vm-0")["labels"], "a claim nobody gives back"
    flow.assert_cleaned_up()

"""One execution at a time on a VM: the claim (the label vm-job-owner, written with its
fingerprint) that entrypoint.sh takes before it touches anything and gives back last."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest

from tests.flow import MUTATING, ZONE, Flow
from tests.harness import needs_gcloud, reap

pytestmark = [pytest.mark.e2e, needs_gcloud]

ONE_EXECUTION = [
    "compute.instances.addAccessConfig",
    "compute.instances.start",
    "compute.instances.stop",
    "compute.instances.deleteAccessConfig",
]


def mutations(flow: Flow) -> list[str]:
    assert flow.emu is not None
    return [c["api"] for c in flow.emu.calls() if c["api"] in MUTATING]


def owner_of(execution: str, task: int = 0) -> str:
    return hashlib.sha256(f"{execution}/{task}".encode()).hexdigest()[:12]


# Offsets, in seconds, from the first execution's job printing its last line (it then reads
# the run's record, stops the VM, detaches the address, gives the claim back: ~2 s here) to
# the second execution's start, which reads the claim about 0.6 s later (gcloud's start-up).
@pytest.mark.parametrize("offset", [0.0, 0.4, 0.8, 1.2, 1.8, 3.0])
def test_an_execution_racing_the_first_ones_cleanup_runs_whole_or_exits_3_untouched(
    make_flow, offset
):
    flow = make_flow(job='echo "$RUN_ID start"; sleep 1; echo "$RUN_ID done"')
    first = flow.popen(CLOUD_RUN_EXECUTION="exec-a")
    try:
        assert first.stdout is not None
        while not first.stdout.readline().endswith(" done\n"):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
        time.sleep(offset)
        t0 = time.monotonic()
        second = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-b")
        took = time.monotonic() - t0
        _, err = first.communicate(timeout=120)
    finally:
        reap(first)
    assert first.returncode == 0, err
    assert second.returncode in (0, 3), f"offset {offset}: {second.stderr}"
    if second.returncode == 3:
        assert "vm-0 is busy: another execution holds it" in second.stderr
        assert took < 10, f"exit 3 took {took:.1f} s: it must be said at once"
        assert mutations(flow) == ONE_EXECUTION, "the second execution touched the VM"
        assert len(flow.runs()) == 1
    else:
        assert len(flow.runs()) == 2, "both jobs ran"
        second_id = flow.runs()[1].split()[1]
        assert second.stdout == f"{second_id} start\n{second_id} done\n", "cut off"
        # the second attached, started, stopped and detached only after the first was done
        assert mutations(flow) == ONE_EXECUTION * 2, mutations(flow)
    flow.assert_cleaned_up()


@pytest.mark.parametrize("conflict", ["http", "operation"])
def test_of_two_executions_claiming_at_once_one_runs_and_the_other_exits_3(make_flow, conflict):
    """The first's setLabels is held 8 s on its way (its fingerprint goes stale meanwhile):
    the second claims the VM and runs; the first, refused (a 412, or an operation that ends
    with it, as the emulator's label_conflict says), reads the claim and exits 3."""
    # the job outlasts the first's re-read of the labels (about 8 s in), so the claim is held
    flow = make_flow(job="sleep 12; echo 'job ran'", settings=f'label_conflict = "{conflict}"')
    flow.emu.fault("compute.instances.setLabels", delay=8, count=1)
    first = flow.popen(CLOUD_RUN_EXECUTION="exec-a")
    try:
        deadline = time.monotonic() + 30
        while not flow.emu.calls("compute.instances.get"):  # the first has read the labels
            assert time.monotonic() < deadline, "the first execution never read the labels"
            time.sleep(0.02)
        second = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-b")
        _, err = first.communicate(timeout=120)
    finally:
        reap(first)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "job ran\n"
    assert first.returncode == 3, err
    assert "labels changed while claiming it" in err
    assert "vm-0 is busy: another execution holds it" in err
    assert len(flow.runs()) == 1
    assert mutations(flow) == ONE_EXECUTION, "the first execution touched the VM"
    flow.assert_cleaned_up()


def test_a_lapsed_claim_is_taken_over_and_other_labels_are_kept(make_flow):
    flow = make_flow()
    lapsed = f"{int(time.time()) - 60}-0123456789ab"
    flow.emu.set_instance(ZONE, "vm-0", labels={"vm-job-owner": lapsed, "team": "trading"})
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert f"vm-0's claim {lapsed} lapsed" in r.stderr
    assert len(flow.runs()) == 1
    flow.assert_cleaned_up()
    assert flow.emu.instance("vm-0")["labels"] == {"team": "trading"}


def test_a_retried_task_takes_its_own_claim_back(make_flow):
    flow = make_flow()
    own = f"{int(time.time()) + 3600}-{owner_of('exec-r')}"
    flow.emu.set_instance(ZONE, "vm-0", labels={"vm-job-owner": own})
    r = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-r")
    assert r.returncode == 0, r.stderr
    assert "is this task's, from an earlier attempt: taking it back" in r.stderr
    flow.assert_cleaned_up()


@pytest.mark.parametrize(
    "holder", [f"{int(time.time()) + 3600}-0123456789ab", "maintenance"], ids=["live", "hold"]
)
def test_a_claim_held_by_another_exits_3_at_once_and_touches_nothing(make_flow, holder):
    flow = make_flow()
    flow.emu.set_instance(ZONE, "vm-0", labels={"vm-job-owner": holder})
    flow.emu.clear_journal()
    r = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-x")
    assert r.returncode == 3, r.stderr
    assert f"label vm-job-owner={holder}" in r.stderr
    assert "gcloud compute instances remove-labels vm-0" in r.stderr, "says how to clear it"
    assert mutations(flow) == [] and flow.emu.calls("compute.instances.setLabels") == []
    assert flow.emu.instance("vm-0")["labels"] == {"vm-job-owner": holder}
    assert flow.runs() == []
    st = flow.entrypoint(command=("status",))
    assert f"claim     held: vm-job-owner={holder}" in st.stdout, st.stdout + st.stderr


def test_without_set_labels_permission_it_exits_5_and_names_it(make_flow):
    flow = make_flow()
    flow.emu.fault("compute.instances.setLabels", status=403, count=-1)
    r = flow.entrypoint()
    assert r.returncode == 5, r.stderr
    assert "compute.instances.setLabels" in r.stderr
    assert mutations(flow) == []


def test_a_missing_instance_is_exit_5_with_the_apis_message(make_flow):
    flow = make_flow()
    r = flow.entrypoint(INSTANCE="no-such-vm")
    assert r.returncode == 5, r.stderr
    assert "no-such-vm' was not found" in r.stderr
    assert "needs compute.instances" not in r.stderr, "a 404 is not a permission problem"
    assert mutations(flow) == [] and flow.emu.calls("compute.instances.setLabels") == []


def test_sigterm_before_the_vm_is_up_still_gives_the_claim_back(make_flow):
    flow = make_flow()
    flow.emu.set_instance(ZONE, "vm-0", boot_delay=30)
    proc = flow.popen()
    try:
        deadline = time.monotonic() + 30
        while flow.emu.instance("vm-0")["status"] != "RUNNING":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(15)
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 143, err
    assert "cleanup: released vm-0's claim" in err
    flow.assert_cleaned_up(stopping_for=30)  # after a signal the stop is asked, not waited for


def test_a_vm_claimed_by_hand_with_gcloud_is_respected(make_flow):
    """An operator's own hold, set with the real gcloud (add-labels sends setLabels with the
    fingerprint), keeps scheduled executions off the VM until removed."""
    flow = make_flow()

    def gcloud(*args: str) -> None:
        argv = ["gcloud", "compute", "instances", *args, "vm-0", f"--zone={ZONE}", "--quiet"]
        subprocess.run(argv, env=flow.env(), check=True, capture_output=True)

    gcloud("add-labels", "--labels=vm-job-owner=maintenance")
    r = flow.entrypoint()
    assert r.returncode == 3, r.stderr
    gcloud("remove-labels", "--labels=vm-job-owner")
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    flow.assert_cleaned_up()

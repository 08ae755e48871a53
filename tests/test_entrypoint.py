"""entrypoint.sh end to end: real gcloud, the emulator, the agent as the VM's guest."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, pid_alive, wait_until
from tests.flow import BOOTING, MUTATING, STAMPED_FIRST_LINE, ZONE, Flow, agent_guest_script
from tests.harness import needs_gcloud, reap

pytestmark = [pytest.mark.e2e, needs_gcloud]


def steps(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " step " in line]


# -- the happy path and the job's outcome ----------------------------------------------------


def test_happy_path_runs_the_job_once_prints_its_log_and_cleans_up(make_flow):
    flow = make_flow(job="echo 'bought 1 BTC (paper)'")
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "bought 1 BTC (paper)" in r.stdout, "the job's log goes to stdout"
    assert len(flow.runs()) == 1 and flow.runs()[0].startswith("0 "), "ran once, not dry"
    flow.assert_cleaned_up()
    lines = steps(r.stderr)
    for n in range(1, 7):
        assert any(f"step {n}/6" in line for line in lines), f"no log line for step {n}"
    assert f"attached ip-0 ({flow.static_ip()}) to vm-0/nic0" in r.stderr
    assert "cleanup: vm-0 is TERMINATED" in r.stderr
    assert f"cleanup: detached {flow.static_ip()} from vm-0" in r.stderr
    assert "s)" in lines[-1], "each phase says how long it took"


def test_failing_job_exits_1_with_its_error_and_still_cleans_up(make_flow):
    flow = make_flow(job="echo 'exchange said: insufficient funds' >&2; exit 3")
    r = flow.entrypoint()
    assert r.returncode == 1, r.stderr
    assert "failed: job failed (exit code 3): exchange said: insufficient funds" in r.stderr
    assert r.stderr.count("exit code 3") == 1, "the exit code is said once"
    assert "insufficient funds" in r.stderr
    assert "insufficient funds" in r.stdout, "the log is printed on failure too"
    assert len(flow.runs()) == 1
    flow.assert_cleaned_up()


def test_job_longer_than_the_seeds_30_seconds_is_not_cut_off(make_flow):
    flow = make_flow(job="sleep 34; echo 'finished after 34 s'")
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "finished after 34 s" in r.stdout
    flow.assert_cleaned_up()


def test_test_mode_passes_dry_run_to_the_job(make_flow):
    flow = make_flow(job='echo "DRY_RUN is $DRY_RUN"')
    r = flow.entrypoint(MODE="test")
    assert r.returncode == 0, r.stderr
    assert "DRY_RUN is 1" in r.stdout
    assert flow.runs()[0].startswith("1 ")


def test_a_vm_that_takes_longer_than_a_call_to_stop_is_waited_for_until_terminated(make_flow):
    """Google holds an operation's wait up to about two minutes before it answers, and a real VM
    can take most of the 90 s it is given to shut down (seen on the real-VM tier). The cleanup
    waits for TERMINATED within STOP_TIMEOUT however long each wait is held: it used to give up
    after its 30-s call, saying the VM "may still be running", and exit 4 after a good run."""
    flow = make_flow(settings="operation_wait_cap = 120\n[defaults]\nstop_delay = 36.0")
    r = flow.entrypoint(timeout=240)
    assert r.returncode == 0, r.stderr
    assert "cleanup: vm-0 is TERMINATED" in r.stderr, r.stderr
    assert "may still be running" not in r.stderr
    flow.assert_cleaned_up()


ROTATED_AWAY = "the-token-before-the-rotation-0000"


def token_secret(value: str) -> str:
    return f'[[secrets]]\nname = "agent-token"\nvalue = "{value}"\n'


def test_a_token_rotated_after_the_execution_started_is_read_again_from_its_secret(make_flow):
    """Cloud Run resolved the job's AGENT_TOKEN (agent-token:latest) when the execution started;
    a new version was added before the VM booted and read it. The agent's 401 is then answered
    by reading the secret's latest version (AGENT_TOKEN_SECRET) and trying once more with it:
    a rotation has no window in which a run fails."""
    flow = make_flow(settings=token_secret(TOKEN))
    r = flow.entrypoint(AGENT_TOKEN=ROTATED_AWAY, AGENT_TOKEN_SECRET="agent-token")
    assert r.returncode == 0, r.stderr
    assert "has a newer one (a rotation since the execution started): trying with it" in r.stderr
    assert len(flow.runs()) == 1, "the job ran once"
    assert TOKEN not in r.stderr + r.stdout and ROTATED_AWAY not in r.stderr + r.stdout
    flow.assert_cleaned_up()


@pytest.mark.parametrize(
    ("token_secret_setting", "said"),
    [
        ({}, "the token in this job and on the VM differ"),
        (
            {"AGENT_TOKEN_SECRET": "agent-token"},
            "secret agent-token's latest version is the token this execution holds",
        ),
        (
            {"AGENT_TOKEN_SECRET": "no-such-secret"},
            "could not read secret no-such-secret for a rotated token: HTTP 404",
        ),
    ],
)
def test_a_token_the_vm_does_not_hold_is_exit_6_and_starts_nothing(
    make_flow, token_secret_setting, said
):
    flow = make_flow(settings=token_secret(ROTATED_AWAY))
    r = flow.entrypoint(AGENT_TOKEN=ROTATED_AWAY, **token_secret_setting)
    assert r.returncode == 6, r.stderr
    assert "the agent rejected AGENT_TOKEN (401)" in r.stderr and said in r.stderr, r.stderr
    assert flow.runs() == []
    assert ROTATED_AWAY not in r.stderr + r.stdout
    flow.assert_cleaned_up()


# -- failures before the run -----------------------------------------------------------------


def test_vm_is_stopped_when_the_agent_never_answers(make_flow):
    flow = make_flow(script="#!/bin/bash\necho 'agent will not start'\nsleep 300\n")
    # BOOT_TIMEOUT also bounds gcloud's start, which took over 6 s on a loaded machine
    r = flow.entrypoint(BOOT_TIMEOUT="12")
    assert r.returncode == 4, r.stderr
    assert "did not answer within BOOT_TIMEOUT=12s" in r.stderr
    assert f"https://{flow.static_ip()}:{flow.port}/" in r.stderr, "the timeout names the URL"
    assert "tries" in r.stderr and "last error:" in r.stderr
    assert "get-serial-port-output vm-0" in r.stderr, "it says where to look next"
    assert flow.runs() == []
    flow.assert_cleaned_up()


@pytest.mark.parametrize(
    "missing", ["PROJECT_ID", "REGION", "ZONE", "INSTANCE", "STATIC_NAME", "AGENT_TOKEN"]
)
def test_missing_setting_is_one_line_exit_2_and_no_cloud_call(make_flow, missing):
    flow = make_flow()
    flow.emu.clear_journal()
    r = flow.entrypoint(**{missing: None})
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and missing in errors[0], r.stderr
    assert flow.emu.calls() == [], "no API call may be made before the configuration is valid"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("MODE", "live", "MODE must be 'run' or 'test'"),
        ("AGENT_PORT", "80a", "AGENT_PORT must be a port number"),
        ("BOOT_TIMEOUT", "-5", "BOOT_TIMEOUT must be a whole number"),
        ("KEEP_VM", "yes", "KEEP_VM must be 0 or 1"),
        ("AGENT_TOKEN", "too-short", "AGENT_TOKEN must be at least 16 characters"),
        ("INSTANCE", "Bad_Name", "instance name 'Bad_Name' is not a valid name"),
    ],
)
def test_malformed_setting_is_a_configuration_error(make_flow, setting, value, message):
    flow = make_flow()
    flow.emu.clear_journal()
    r = flow.entrypoint(**{setting: value})
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert flow.emu.calls() == []
    if setting == "AGENT_TOKEN":
        assert value not in r.stderr, "not even a bad token is printed"


def test_task_index_out_of_range_is_a_configuration_error(make_flow):
    flow = make_flow()
    r = flow.entrypoint(
        INSTANCE=None, INSTANCES="vm-0", STATIC_NAME="ip-0", CLOUD_RUN_TASK_INDEX="1"
    )
    assert r.returncode == 2
    assert "task index 1 is out of range" in r.stderr


def test_permanent_api_error_fails_at_once_with_the_apis_message(make_flow):
    flow = make_flow()
    r = flow.entrypoint(STATIC_NAME="no-such-ip")
    assert r.returncode == 5, r.stderr
    assert "no-such-ip' was not found" in r.stderr
    assert len(flow.emu.calls("compute.addresses.get")) == 1, "a 404 is not retried"
    assert not [c for c in flow.emu.calls() if c["api"] in MUTATING]


# -- transient errors ------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["compute.instances.start", "compute.instances.addAccessConfig"])
@pytest.mark.parametrize("status", [503, 429])
def test_transient_api_errors_are_retried(make_flow, api, status):
    flow = make_flow()
    flow.emu.fault(api, status=status, count=2)
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert [c["status"] for c in flow.emu.calls(api)] == [status, status, 200]
    assert "transient error, retrying" in r.stderr
    assert len(flow.runs()) == 1
    flow.assert_cleaned_up()


# -- leftovers, retries, concurrency ---------------------------------------------------------


def test_leftovers_of_a_dead_execution_are_taken_over_and_cleaned_up(make_flow):
    flow = make_flow()
    flow.emu.set_instance(
        ZONE,
        "vm-0",
        status="RUNNING",
        access_configs=[{"name": "External NAT", "natIP": flow.static_ip()}],
    )
    flow.emu.clear_journal()
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "already attached to vm-0; keeping it" in r.stderr
    assert flow.emu.calls("compute.instances.addAccessConfig") == []
    assert len(flow.runs()) == 1
    flow.assert_cleaned_up()


def test_another_access_config_on_the_interface_is_replaced(make_flow):
    flow = make_flow()
    flow.emu.set_instance(ZONE, "vm-0", access_configs=[{"name": "ephemeral"}])
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "has another access config ('ephemeral'); replacing it" in r.stderr
    flow.assert_cleaned_up()


def test_retried_task_of_the_same_execution_does_not_run_the_job_twice(make_flow):
    flow = make_flow(job="echo 'placed order'")
    ids = {"CLOUD_RUN_EXECUTION": "trade-job-abc12", "CLOUD_RUN_TASK_INDEX": "0"}
    first = flow.entrypoint(**ids)
    assert first.returncode == 0, first.stderr
    second = flow.entrypoint(**ids)
    assert second.returncode == 0, second.stderr
    assert "already has run" in second.stderr
    assert "placed order" in second.stdout, "the retry reports the earlier run's log"
    assert len(flow.runs()) == 1, "the job must run once per execution"
    flow.assert_cleaned_up()


def test_second_execution_on_a_busy_vm_leaves_it_alone(make_flow):
    flow = make_flow(job="sleep 8; echo 'first run complete'")
    first = flow.popen(CLOUD_RUN_EXECUTION="exec-a")
    try:
        wait_until(lambda: len(flow.runs()) == 1, 60, "the first execution's job to start")
        flow.emu.clear_journal()
        second = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-b")
        assert second.returncode == 3, second.stderr
        assert "vm-0 is busy: another execution holds it" in second.stderr
        assert not [c for c in flow.emu.calls() if c["api"] in MUTATING], (
            "the second execution must not touch the VM or its address"
        )
        out, err = first.communicate(timeout=120)
    finally:
        reap(first)
    assert first.returncode == 0, err
    assert "first run complete" in out, "the running job was not cut off"
    assert len(flow.runs()) == 1
    flow.assert_cleaned_up()


def test_a_run_started_outside_any_execution_is_left_alone_with_exit_3(make_flow):
    """Someone started a run on the agent by hand (no claim on the VM): the execution finds the
    agent busy (409), leaves the VM up and the address attached, and gives its claim back."""
    # the kept run (test mode) returns at once; the run by hand (run mode) outlasts the execution
    # that finds it, however slow the machine
    flow = make_flow(job="[ \"${DRY_RUN:-0}\" = 1 ] && exit 0; sleep 30; echo 'by hand'")
    kept = flow.entrypoint(KEEP_VM="1", MODE="test")  # the VM up, its address attached
    assert kept.returncode == 0, kept.stderr
    flow.emu.set_instance(ZONE, "vm-0", labels={})  # the operator gives the kept VM's claim back
    url = f"https://{flow.static_ip()}:{flow.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=auth, verify=False, timeout=10) as agent:  # noqa: S501
        assert agent.post("/runs", json={"mode": "run"}).status_code == 202
        flow.emu.clear_journal()
        r = flow.entrypoint()
        assert r.returncode == 3, r.stderr
        assert "another run is in progress on vm-0" in r.stderr
        assert "cleanup: released vm-0's claim" in r.stderr
        assert not [
            c
            for c in flow.emu.calls()
            if c["api"] in ("compute.instances.stop", "compute.instances.deleteAccessConfig")
        ], "the run by hand was cut off"
        assert agent.get("/runs?limit=1").json()["data"][0]["status"] == "running"
    assert "vm-job-owner" not in flow.emu.instance("vm-0")["labels"]


def test_three_tasks_drive_three_vms_in_parallel(make_flow):
    flow = make_flow(count=3)
    common = {
        "INSTANCE": None,
        "INSTANCES": "vm-0,vm-1,vm-2",
        "STATIC_NAME": "ip-0,ip-1,ip-2",
        "CLOUD_RUN_EXECUTION": "fanout-1",
    }
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(
            pool.map(lambda i: flow.entrypoint(CLOUD_RUN_TASK_INDEX=str(i), **common), range(3))
        )
    for i, r in enumerate(results):
        assert r.returncode == 0, f"task {i}: {r.stderr}"
        assert f"on vm-{i} in" in r.stderr
        assert len(flow.runs(i)) == 1, f"vm-{i}'s job ran {len(flow.runs(i))} times"
        flow.assert_cleaned_up(i)


# -- signals, timeouts, debugging ------------------------------------------------------------


def test_sigterm_during_the_run_cancels_the_job_and_stops_the_vm(make_flow, tmp_path):
    pidfile = tmp_path / "job.pid"
    flow = make_flow(job=f"echo $$ > {pidfile}; sleep 300")
    proc = flow.popen()
    try:
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, "the job")
        job_pid = int(pidfile.read_text())
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert proc.returncode == 143, err
    stop = flow.emu.calls("compute.instances.stop")
    assert stop, "the VM was not stopped"
    assert stop[0]["time"] - sent < 10, "the stop must be asked for within Cloud Run's 10 s"
    # the signal lands in the log's long poll: the cleanup's own calls still read their answers
    assert "cancelled (its record says cancelled)" in err, err
    assert not pid_alive(job_pid), "the job outlived the cancel"
    flow.assert_cleaned_up(stopping_for=30)  # after a signal the stop is asked, not waited for


def test_an_execution_killed_10_s_after_sigterm_leaves_the_vm_to_the_next_one(make_flow):
    """Cloud Run cancels a task (or its timeout passes): SIGTERM, and SIGKILL 10 s later. The
    VM takes 20 s to stop. Everything the execution took on must be given back within those
    10 s, so that an execution started 2 s after the kill runs its job, waiting only for the VM
    to finish stopping (it used to exit 3 for the 75 minutes the claim held)."""
    flow = make_flow(
        job="trap 'exit 1' TERM; echo started; sleep 60 & wait",
        settings="[defaults]\nstop_delay = 20.0",
    )
    first = flow.popen(CLOUD_RUN_EXECUTION="exec-cancelled")
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == "started\n"
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(10)
        except subprocess.TimeoutExpired:
            first.kill()  # what Cloud Run does 10 s after its SIGTERM
            first.wait(5)
        done_in = time.monotonic() - sent
    finally:
        reap(first)
    assert first.returncode == 143, f"not through its cleanup within 10 s ({done_in:.1f} s)"
    inst = flow.emu.instance("vm-0")
    assert inst["status"] == "STOPPING", "the stop takes 20 s: the cleanup did not wait for it"
    assert inst["access_configs"] == [] and "vm-job-owner" not in inst["labels"], inst
    time.sleep(2)
    second = flow.entrypoint(CLOUD_RUN_EXECUTION="exec-next")
    assert second.returncode == 0, second.stderr
    assert "started" in second.stdout
    assert len(flow.runs()) == 2
    starts = flow.emu.calls("compute.instances.start")
    terminated = [
        e["time"]
        for e in flow.emu.journal()
        if e.get("event") == "status" and e["status"] == "TERMINATED"
    ]
    assert starts[-1]["status"] == 200 and starts[-1]["time"] > terminated[0], (
        "the next execution started the VM only once it had stopped"
    )
    flow.assert_cleaned_up()


def test_run_timeout_cancels_the_run_and_stops_the_vm(make_flow):
    flow = make_flow(job="sleep 300")
    r = flow.entrypoint(RUN_TIMEOUT="3")
    assert r.returncode == 4, r.stderr
    assert "still running after RUN_TIMEOUT=3s; cancelling it" in r.stderr
    assert "cancelled" in r.stderr
    flow.assert_cleaned_up()


def test_keep_vm_leaves_the_vm_up_under_its_claim_and_says_how_to_end_it(make_flow):
    """A kept VM is being debugged: no scheduled execution may stop it or detach its address
    until the operator gives it back (or the claim lapses)."""
    flow = make_flow()
    r = flow.entrypoint(KEEP_VM="1")
    assert r.returncode == 0, r.stderr
    assert "KEEP_VM=1: leaving vm-0 running" in r.stderr
    assert "keeping its claim (label vm-job-owner=" in r.stderr and "lapses at" in r.stderr
    assert "gcloud compute instances stop vm-0" in r.stderr, "it says how to stop it"
    assert "gcloud compute instances remove-labels vm-0" in r.stderr, "and how to release it"
    assert "released vm-0's claim" not in r.stderr
    inst = flow.emu.instance("vm-0")
    assert inst["status"] == "RUNNING" and inst["access_configs"], inst
    assert inst["labels"]["vm-job-owner"].split("-", 1)[0].isdigit(), inst["labels"]
    scheduled = flow.entrypoint()
    assert scheduled.returncode == 3, scheduled.stderr
    assert flow.emu.instance("vm-0")["status"] == "RUNNING", "the kept VM was stopped"
    flow.emu.set_instance(ZONE, "vm-0", labels={})  # the operator is done: remove-labels
    after = flow.entrypoint()
    assert after.returncode == 0, after.stderr
    flow.assert_cleaned_up()


# -- what the operator sees ------------------------------------------------------------------


def test_the_token_never_appears_even_in_a_trace(make_flow):
    flow = make_flow()
    r = flow.entrypoint("-x")
    assert r.returncode == 0, r.stderr
    assert TOKEN not in r.stderr and TOKEN not in r.stdout
    api_token = flow.emu.env["CLOUDSDK_AUTH_ACCESS_TOKEN"]
    assert f"Bearer {api_token}" not in r.stderr, "nor the Compute API's access token"


def test_on_cloud_run_every_log_line_is_json_with_severity(make_flow):
    flow = make_flow(job="echo 'plain job output'")
    r = flow.entrypoint(
        CLOUD_RUN_JOB="trader", CLOUD_RUN_EXECUTION="trader-x1", CLOUD_RUN_TASK_INDEX="0"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert entry["severity"] in ("INFO", "WARNING", "ERROR"), line
        assert entry["message"]
    assert "plain job output" in r.stdout


def test_sigterm_during_a_retry_wait_starts_the_cleanup_at_once(make_flow):
    flow = make_flow()
    flow.emu.fault("compute.instances.start", status=503, count=-1)
    proc = flow.popen()
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "retrying in 8s" in line:  # the longest wait before it: 8 s of sleep
                break
        else:
            raise AssertionError("no 8 s retry wait: " + "".join(seen))
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 143, "".join(seen) + err
    stop = flow.emu.calls("compute.instances.stop")
    assert stop, "the cleanup did not stop the VM"
    # gcloud's own start-up (~0.6 s) is in this; the 8 s sleep must not be
    assert stop[0]["time"] - sent < 4, f"the cleanup began {stop[0]['time'] - sent:.1f} s late"
    flow.assert_cleaned_up(stopping_for=30)  # after a signal the stop is asked, not waited for


# -- the job's output, live ----------------------------------------------------------------------


def test_the_jobs_lines_reach_stdout_as_they_are_printed(make_flow, tmp_path):
    go = tmp_path / "go"
    flow = make_flow(
        job=f'echo "first line at $(date +%s.%N)"; while [ ! -e {go} ]; do sleep 0.1; done; '
        "printf 'last line, no newline'"
    )
    proc = flow.popen()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        arrived = time.time()
        if not first.startswith("first line at "):
            raise AssertionError(f"stdout: {first!r}; stderr: {reap(proc)[1]}")
        lag = arrived - float(first.split()[-1])
        assert lag < 2, f"the job's first line reached stdout {lag:.1f} s after it was printed"
        assert proc.poll() is None, "the line came before the run ended"
        go.touch()
        rest, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    assert rest == "last line, no newline\n", "a last line without a newline is printed too"
    assert first.count("first line") == 1 and "first line" not in rest, "no line twice"


def test_what_the_job_prints_while_it_stops_is_on_stdout_after_sigterm(make_flow):
    flow = make_flow(
        job="trap 'echo \"closing orders on SIGTERM\"; exit 1' TERM; echo started; sleep 300 & wait"
    )
    proc = flow.popen()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        last = proc.stdout.readline()  # Cloud Run's SIGKILL comes 10 s after its SIGTERM
        printed = time.monotonic() - sent
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 143, err
    assert last == "closing orders on SIGTERM\n", err
    assert printed < 10, f"the job's last line came {printed:.1f} s after SIGTERM"
    flow.assert_cleaned_up(stopping_for=30)  # after a signal the stop is asked, not waited for


@pytest.mark.parametrize("how", ["stopped", "preempted"])
def test_a_vm_that_goes_away_under_a_running_job_is_noticed_and_reported_with_exit_8(
    make_flow, how
):
    flow = make_flow(job="echo started; sleep 300")
    proc = flow.popen()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        stopped = time.monotonic()
        if how == "preempted":  # Compute Engine takes the Spot VM back
            flow.emu.set_instance(ZONE, "vm-0", preempt=True)
        else:  # a stop by hand
            flow.emu.set_instance(ZONE, "vm-0", status="TERMINATED")
        _, err = proc.communicate(timeout=120)
        noticed = time.monotonic() - stopped
    finally:
        reap(proc)
    assert proc.returncode == 8, err
    assert noticed < 30, f"the orchestrator took {noticed:.0f} s to notice the VM was gone"
    assert "the VM went away during run" in err and "vm-0 is TERMINATED" in err
    assert "Spot VM is preempted this way" in err
    flow.assert_cleaned_up()


@pytest.mark.parametrize(
    ("runner", "failure_line"),
    [
        ("guest-agent", 'Script "startup-script" failed with error: exit status 3'),
        ("legacy", 'Script "startup-script" failed with error: exit status 3'),
        ("debian-20211116", "startup-script exit status 3"),  # Debian's package says only this
        # every line twice on the console (StandardOutput=journal+console): relayed once
        ("legacy-20240802", 'Script "startup-script" failed with error: exit status 3'),
    ],
)
def test_a_startup_script_that_fails_on_the_console_ends_the_wait_at_once(
    make_flow, runner, failure_line
):
    """No boot state says so (the script died before it could publish one): the script
    runner's failure line on the serial console ends the wait, with the script's lines."""
    script = (
        f"#!/bin/bash\n{STAMPED_FIRST_LINE}\n"
        "echo 'reading the settings'\necho 'no route to the repository' >&2\nexit 3\n"
    )
    flow = make_flow(script=script, runner=runner)
    t0 = time.monotonic()
    r = flow.entrypoint(BOOT_TIMEOUT="120")
    took = time.monotonic() - t0
    assert r.returncode == 4, r.stderr
    assert took < 30, f"{took:.0f} s: the failure must end the wait, not BOOT_TIMEOUT"
    assert "[vm] reading the settings" in r.stderr
    assert "[vm] no route to the repository" in r.stderr
    assert f"[vm] {failure_line}" in r.stderr
    assert "vm-0's boot failed: the startup script failed with error: exit status 3" in r.stderr
    assert r.stderr.count("[vm] reading the settings") == 1, "each console line once"
    assert r.stderr.count(f"[vm] {failure_line}") == 1, "each console line once"
    flow.assert_cleaned_up()


@pytest.mark.parametrize("console", ["kept", "cleared"])
def test_an_earlier_boots_failure_on_the_console_does_not_end_the_next_boot(
    make_flow, tmp_path, console
):
    """Compute Engine serves the console only while the VM runs, and may keep the earlier
    boots' output across a stop: the failure line of the boot before is not this boot's."""
    fixed = tmp_path / "fixed"
    script = agent_guest_script(
        f"[[ -e {fixed} ]] || {{ echo 'the first boot fails' >&2; exit 3; }}"
    )
    flow = make_flow(script=script, console_after_stop=console)
    failed = flow.entrypoint(CLOUD_RUN_EXECUTION="boot-1")
    assert failed.returncode == 4, failed.stderr
    assert "[vm] the first boot fails" in failed.stderr
    fixed.touch()
    second = flow.entrypoint(CLOUD_RUN_EXECUTION="boot-2")
    assert second.returncode == 0, second.stderr
    assert "the first boot fails" not in second.stderr
    assert "failed with error" not in second.stderr
    assert "job output line" in second.stdout
    assert second.stderr.count(f"] {BOOTING}") == 1, "this boot's first line, once"
    flow.assert_cleaned_up()


def test_an_earlier_boots_console_lines_are_not_relayed_again(make_flow):
    script = agent_guest_script('echo "booting at $(date +%s%N)"')
    flow = make_flow(script=script)
    first = flow.entrypoint(CLOUD_RUN_EXECUTION="boot-1")
    second = flow.entrypoint(CLOUD_RUN_EXECUTION="boot-2")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for r in (first, second):
        assert r.stderr.count("[vm] booting at ") == 1, r.stderr
    booted = [
        line.split("booting at ")[1]
        for r in (first, second)
        for line in r.stderr.splitlines()
        if "booting at" in line
    ]
    assert booted[0] != booted[1], "the second execution relayed the first boot's line"


def agent_pid(flow: Flow) -> int:
    """The guest's uvicorn process (the agent)."""
    for pid in flow.emu.instance("vm-0")["guest_pids"]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"uvicorn" in cmdline:
            return pid
    raise AssertionError("no agent process among the guest's")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restarted", "killed"])
def test_an_agent_restarted_mid_run_loses_and_doubles_no_line(make_flow, tmp_path, how):
    """The agent restarts while the job prints: restarted (SIGTERM, as `systemctl restart`), it
    ends the job at once (interrupted), and may answer the orchestrator's long poll with the end
    before it goes, or go first; killed (SIGKILL), it goes without a word, and its next start
    ends the job it left. Either way the orchestrator reconnects where it must and goes on from
    its offset: its stdout is the run's log on the VM, byte for byte."""
    job = (
        "trap 'echo \"stopped at $i\"; exit 143' TERM; "
        'for i in $(seq 1 3000); do echo "line $i"; sleep 0.01; done'
    )
    flow = make_flow(job=job, script=agent_guest_script(restart=True))
    proc = flow.popen()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "line 1\n", first
        time.sleep(1)
        os.kill(agent_pid(flow), how)
        out = first + proc.stdout.read()  # (communicate() would skip what readline buffered)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(60)
    finally:
        reap(proc)
    assert proc.returncode == 1, err
    assert "interrupted" in err
    if how == signal.SIGKILL:  # no answer came before it went: the follow must have reconnected
        assert "retrying in" in err, "the orchestrator did not see the agent go away"
    logs = list((tmp_path / "vm-0" / "state" / "logs").glob("*.log"))
    assert len(logs) == 1
    assert out == logs[0].read_text(), "stdout differs from the run's log on the VM"
    lines = out.splitlines()
    numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbers == list(range(1, len(numbers) + 1)), "a line lost or doubled"
    assert lines[-1].startswith("stopped at "), "the job's last words are there too"


def test_a_vm_under_repair_is_waited_for_not_taken_for_gone(make_flow):
    """REPAIRING can come back to RUNNING: while the agent does not answer, a VM Compute Engine
    is repairing is waited for (the run ends as the agent's restart left it), not exit 8."""
    job = 'for i in $(seq 1 60); do echo "line $i"; sleep 0.1; done'
    flow = make_flow(job=job, script=agent_guest_script(restart=True))
    proc = flow.popen()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "line 1\n"
        flow.emu.set_instance(ZONE, "vm-0", status="REPAIRING")
        os.kill(agent_pid(flow), signal.SIGTERM)  # the agent is gone while the host is repaired
        time.sleep(4)
        try:  # the repair ends, unless something stopped the VM meanwhile
            flow.emu.set_instance(ZONE, "vm-0", status="RUNNING", if_status="REPAIRING")
        except httpx.HTTPStatusError as e:
            # the restarted agent answered during the repair and the run ended first: its
            # cleanup's stop came before the repair's end, which no longer applies
            assert e.response.status_code == 409, e.response.text
        proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(60)
    finally:
        reap(proc)
    assert proc.returncode == 1, err
    assert "vm-0 is REPAIRING (Compute Engine can bring it back to RUNNING)" in err, err
    assert "went away" not in err
    flow.assert_cleaned_up()


# -- status and logs ------------------------------------------------------------------------------


def test_status_and_logs_read_a_running_vm_and_change_nothing(make_flow):
    flow = make_flow(job="echo 'status job output'")
    first = flow.entrypoint(KEEP_VM="1", CLOUD_RUN_EXECUTION="exec-s")
    assert first.returncode == 0, first.stderr
    run_id = next(w for w in first.stderr.split() if len(w) == 32 and w.isalnum())
    flow.emu.clear_journal()
    st = flow.entrypoint(command=("status",))
    assert st.returncode == 0, st.stderr
    assert "instance  vm-0 in asia-northeast3-c: RUNNING" in st.stdout
    assert f"address   ip-0 {flow.static_ip()}: attached to vm-0" in st.stdout
    assert f"agent     https://{flow.static_ip()}:{flow.port}: ok, version" in st.stdout
    assert f"  {run_id}  succeeded   exit 0" in st.stdout, st.stdout
    logs = flow.entrypoint(command=("logs",))
    assert (logs.returncode, logs.stdout) == (0, "status job output\n"), logs.stderr
    by_id = flow.entrypoint(command=("logs", run_id))
    assert by_id.stdout == "status job output\n", by_id.stderr
    assert not [c for c in flow.emu.calls() if c["api"] in MUTATING], "status and logs only read"
    assert flow.emu.instance("vm-0")["status"] == "RUNNING"


def test_status_of_a_stopped_vm_and_of_a_missing_one(make_flow):
    flow = make_flow()
    st = flow.entrypoint(command=("status",))
    assert st.returncode == 0, st.stderr
    assert "vm-0 in asia-northeast3-c: TERMINATED" in st.stdout
    assert "claim     none: the VM is free" in st.stdout
    assert (
        "not attached" in st.stdout and "agent     not running: the VM is TERMINATED" in st.stdout
    )
    logs = flow.entrypoint(command=("logs",))
    assert logs.returncode == 11 and "vm-0 is TERMINATED" in logs.stderr, logs.stderr
    missing = flow.entrypoint(command=("status",), INSTANCE="no-such-vm")
    assert missing.returncode == 5 and "no-such-vm' was not found" in missing.stderr
    assert not [c for c in flow.emu.calls() if c["api"] in MUTATING], "status and logs only read"


def test_logs_of_a_bad_or_unknown_run_id_say_so_and_exit_2_or_11(make_flow):
    flow = make_flow(job="echo 'kept job'")
    bad = flow.entrypoint(command=("logs", "nope"))
    assert bad.returncode == 2, bad.stderr
    assert "a run id is 32 hex characters (as status lists them), not 'nope'" in bad.stderr
    assert flow.emu.calls() == [], "an argument is checked before any cloud call"
    extra = flow.entrypoint(command=("status", "vm-0"))
    assert extra.returncode == 2 and "status takes no arguments" in extra.stderr
    kept = flow.entrypoint(KEEP_VM="1")
    assert kept.returncode == 0, kept.stderr
    unknown = flow.entrypoint(command=("logs", "0" * 32))
    assert unknown.returncode == 11, unknown.stderr
    assert f"vm-0 has no run {'0' * 32} (./entrypoint.sh status lists" in unknown.stderr
    assert "follows" not in unknown.stderr and unknown.stdout == ""
    latest = flow.entrypoint(command=("logs",))
    assert latest.returncode == 0 and latest.stdout == "kept job\n", latest.stderr
    assert "(succeeded, exit code 0) follows on stdout" in latest.stderr


def test_status_needs_no_token_and_then_lists_no_runs(make_flow):
    flow = make_flow()
    kept = flow.entrypoint(KEEP_VM="1")
    assert kept.returncode == 0, kept.stderr
    st = flow.entrypoint(command=("status",), AGENT_TOKEN=None)
    assert st.returncode == 0, st.stderr
    assert "vm-0 in asia-northeast3-c: RUNNING" in st.stdout
    assert "agent     https://" in st.stdout and ": ok, version" in st.stdout, st.stdout
    assert "runs      not asked: AGENT_TOKEN is not set" in st.stdout
    run = flow.entrypoint(AGENT_TOKEN=None)
    assert run.returncode == 2 and "AGENT_TOKEN" in run.stderr, "a run still needs it"


def test_help_lists_run_status_and_logs(make_flow):
    flow = make_flow()
    r = flow.entrypoint(command=("--help",))
    assert r.returncode == 0
    for word in ("run ", "status ", "logs "):
        assert word in r.stdout


# -- which boot a boot state belongs to (issue 26, item 12) --------------------------------------

PUBLISH_STATE = (
    'curl -sS -X PUT --data "$1" -H "Metadata-Flavor: Google" '
    '"http://$GCE_METADATA_HOST/computeMetadata/v1/instance/guest-attributes/vm-job-agent/boot"'
)


def test_a_boot_that_fails_before_the_first_read_is_known_at_once_without_the_console(make_flow):
    """startup.sh's early steps take less than the 2 s between two reads, then `uv sync` fails:
    the first state read is already `failed:`. With the console refused (no
    getSerialPortOutput), only the boot id tells that failure from an earlier boot's: it must
    end the wait at once, not at BOOT_TIMEOUT."""
    from tests.test_iam import documented_role, settings

    script = (
        f"#!/bin/bash\npublish() {{ {PUBLISH_STATE}; }}\n"
        'publish "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) failed: boot 5/6 dependencies: uv sync '
        'failed: no such package"\nsleep 300\n'
    )
    role = documented_role() - {"compute.instances.getSerialPortOutput"}
    flow = make_flow(script=script, settings=settings(role))
    t0 = time.monotonic()
    r = flow.entrypoint(BOOT_TIMEOUT="60")
    took = time.monotonic() - t0
    assert r.returncode == 4, r.stderr
    assert "vm-0's boot failed: boot 5/6 dependencies: uv sync failed" in r.stderr, r.stderr
    assert took < 20, f"{took:.0f} s: a fresh failure is known at the next read"
    flow.assert_cleaned_up()


def test_a_boot_state_from_before_the_vms_start_is_not_taken_for_this_boots(make_flow):
    """A state whose boot id is older than the VM's lastStartTimestamp (what Compute Engine
    may keep across a stop) is an earlier boot's: a stale `failed:` does not end this one."""
    stale = (
        f"publish() {{ {PUBLISH_STATE}; }}\n"
        'publish "$(date -u -d "-1 hour" +%Y-%m-%dT%H:%M:%S.%3NZ) failed: an earlier boot"'
    )
    flow = make_flow(script=agent_guest_script(stale))
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "an earlier boot" not in r.stderr
    assert "job output line" in r.stdout
    flow.assert_cleaned_up()

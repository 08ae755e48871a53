"""The soak: many scheduled slots on the emulated chain, each with a fault, every slot accounted
for (issue 30). Run as root (the emulator's private network):

    uv run python bench/soak.py [--slots N] [--seed S] [--faults KIND,KIND...]

`deploy.sh apply` from an empty project onto the emulator (hourly slots, `0 * * * *`, the check
16 minutes later, a webhook channel on loopback), then N slots back to back: the emulator's clock
is moved to each slot's time (gcp_emulator/core/clock.py: no waiting for real hours), the
scheduler fires it, with the slot's faults, and once its executions have ended the clock moves
on to its check's time and the check job is fired. Faults (FAULTS below), drawn from a seeded mix
where every kind comes at least once, and at most one "main" fault and one "pre" fault a slot:

- Cloud Scheduler: a duplicate delivery (pre); a delivery past START_DEADLINE; a dropped one.
- Cloud Run: the task SIGKILLed at a random moment, then its retry; a task timeout; a cancel.
- Compute Engine: a stockout shorter (pre) and longer than BOOT_TIMEOUT; a preemption mid-run;
  a burst of 503 and 429 (pre); a slow deleteAccessConfig (pre); the VM stopped by hand mid-run.
- The VM: the agent killed mid-run; the job failing; a failed boot.
- The operator: a MODE=test run and a `status` during the slot.

Then, from the emulator's journal and state, the executions and the job's own records, per
fault kind and in total: runs of the job per slot (at most one: 0 double runs), slots that
should have succeeded and did, slots that did not succeed without an alert (a failed execution or
a failing check, at the webhook: 0), the time from the fault to the alert, VM-seconds RUNNING
outside every execution of the job (0), what is left at the end (address attached, claim held,
task or guest processes: none), and the exit codes seen per fault kind, against the ones the
exit-code table gives for it. Exits 1 on any violation, and prints the seed to replay it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcp_emulator.config import dump_config  # noqa: E402
from gcp_emulator.demo import deployment  # noqa: E402
from tests import chain  # noqa: E402
from tests.deployed import CHECK_JOB, JOB, REGION, SCHEDULER_JOB, Deployed  # noqa: E402
from tests.harness import EmulatorProcess, WebhookReceiver  # noqa: E402

SCHEDULE = "0 * * * *"
SLOT_SECONDS = 3600
START_DEADLINE = 900
CHECK_MARGIN = 60
# the check runs this long after each slot: deploy/check_schedule.py, in whole minutes (16)
CHECK_AFTER = -(-(START_DEADLINE + CHECK_MARGIN) // 60) * 60
SETTINGS = {
    "SCHEDULE": SCHEDULE,
    "CHECK_SCHEDULE": "",  # derived: 16 * * * *
    "START_DEADLINE": str(START_DEADLINE),
    "CHECK_MARGIN": str(CHECK_MARGIN),
    "BOOT_TIMEOUT": "30",
    "RUN_TIMEOUT": "45",
    "STOP_TIMEOUT": "60",
    "FIRST_BOOT_TIMEOUT": "120",
}
MID_RUN_SLEEP = 15  # seconds the job sleeps when a fault must land while it runs
TASK_TIMEOUT = 30  # the task timeout of a slot whose task times out (the job sleeps longer)
SIGKILL = -9  # an attempt killed by the signal (Cloud Run records no exit code then)

# kind: (when it lands, whether the slot may end without its job succeeding, the exit codes the
# slot's executions' attempts may end with: docs/orchestrator.md's table. A retry (attempt 1) of a
# slot whose run failed, was cut off or lost its VM finds the slot's record and ends 1 without
# running the job again (RERUN_FAILED unset); a duplicate delivery's execution ends 0)
FAULTS: dict[str, tuple[str, bool, set[int]]] = {
    "none": ("main", False, {0}),
    "scheduler-late": ("main", True, {10}),  # too late for the slot, on either attempt
    "scheduler-dropped": ("main", True, set()),  # no execution: the check says 12
    "task-killed": ("main", False, {0, SIGKILL}),  # the retry gets the run back, or runs it
    "task-timeout": ("main", True, {143, 1}),  # SIGTERM: cleanup ran; the retry: failed
    "task-cancelled": ("main", True, {143}),  # a cancelled execution is not retried
    "stockout-long": ("main", True, {9}),
    "preempted": ("main", True, {8, 1}),
    "stopped-by-hand": ("main", True, {8, 1}),
    "agent-killed": ("main", True, {4, 1}),  # no agent to follow: the run timed out
    "job-fails": ("main", True, {1}),
    "boot-fails": ("main", True, {4}),
    "operator": ("main", False, {0}),
    "scheduler-duplicate": ("pre", False, {0}),
    "stockout-short": ("pre", False, {0}),
    "api-burst": ("pre", False, {0}),
    "slow-detach": ("pre", False, {0}),
}
# a pre fault goes with a main one whose slot fires and boots the VM
PRE_WITH = {
    "none",
    "task-killed",
    "task-timeout",
    "task-cancelled",
    "preempted",
    "stopped-by-hand",
    "agent-killed",
    "job-fails",
    "operator",
}
# the operator's executions during a slot: a test run finds the VM busy (3) unless the slot's
# run has ended, and `status` reads it (0), or finds it stopped (11)
OPERATOR_CODES = {"test run": {3, 0}, "status": {0, 11}}
BURST_APIS = (
    "compute.instances.get",
    "compute.instances.start",
    "compute.instances.setLabels",
    "compute.instances.addAccessConfig",
)
JOB_SCRIPT = """#!/bin/bash
# the soak's job: records its start and end (the soak counts runs per slot from them), and does
# what the soak's directive says: ok, fail, or sleep SECONDS
d={dir}
printf 'start %s %s\\n' "$RUN_KEY" "${{DRY_RUN:-0}}" >>"$d/runs"
directive=$(cat "$d/directive" 2>/dev/null || echo ok)
case $directive in
  fail) echo "soak job: failing as told"; exit 3 ;;
  sleep*) sleep "${{directive#sleep }}" ;;
esac
printf 'end %s %s\\n' "$RUN_KEY" "${{DRY_RUN:-0}}" >>"$d/runs"
echo "soak job: done"
"""


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak: {text}", file=sys.stderr, flush=True)


def epoch_of(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@dataclass
class Slot:
    index: int
    at: float  # the slot's time (the emulator's clock)
    main: str
    pre: str | None
    fault_at: float = 0.0
    executions: list[dict[str, Any]] = field(default_factory=list)
    operator: list[dict[str, Any]] = field(default_factory=list)  # the operator's executions
    check: dict[str, Any] | None = None
    runs: int = 0  # the job's runs for the slot (its start lines)
    finished: bool = False  # the job ran to its end (its end line)
    succeeded: bool = False  # the slot's check exited 0
    alerts: list[float] = field(default_factory=list)  # incidents opened: when, emulator's clock
    notifications: int = 0  # the webhook's notifications taken for it so far
    violations: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [self.main] + ([self.pre] if self.pre else [])

    @property
    def key(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(self.at)) + "/0"


def plan(slots: int, seed: int, kinds: list[str]) -> list[tuple[str, str | None]]:
    """Each slot's main and pre fault: every kind at least once (two a slot where there are
    more kinds than slots), then a seeded mix where a third of the slots have no main fault."""
    rng = random.Random(seed)
    mains = [k for k in kinds if FAULTS[k][0] == "main" and k != "none"]
    pres = [k for k in kinds if FAULTS[k][0] == "pre"]
    rng.shuffle(mains)
    rng.shuffle(pres)
    if len(mains) > slots:
        raise SystemExit(f"soak: {len(mains)} main fault kinds need at least {len(mains)} slots")
    out: list[list[Any]] = [[m, None] for m in mains]
    while len(out) < slots:
        out.append(["none" if rng.random() < 0.34 or not mains else rng.choice(mains), None])
    rng.shuffle(out)
    for pre in pres:  # each pre kind once, on a slot that boots the VM and has none yet
        free = [s for s in out if s[0] in PRE_WITH and s[1] is None]
        if not free:
            raise SystemExit(f"soak: too few slots for the fault kind {pre}")
        rng.choice(free)[1] = pre
    for s in out:
        if s[1] is None and s[0] in PRE_WITH and pres and rng.random() < 0.3:
            s[1] = rng.choice(pres)
    return [(m, p) for m, p in out]


class Soak:
    def __init__(self, base: Path, seed: int) -> None:
        self.base = base
        self.rng = random.Random(seed * 7919 + 1)
        self.dir = base / "job"
        self.dir.mkdir(mode=0o755)
        (self.dir / "job.sh").write_text(JOB_SCRIPT.format(dir=self.dir))
        (self.dir / "job.sh").chmod(0o755)
        self.runs_file = self.dir / "runs"
        self.runs_file.write_text("")
        self.runs_file.chmod(0o666)
        self.directive("ok")
        self.hook = WebhookReceiver()
        dep = deployment(
            base / "deployment",
            schedule=SCHEDULE,
            job=f"bash {self.dir}/job.sh",
            settings={**SETTINGS, "ALERT_WEBHOOK_URL": self.hook.url},
        )
        config = base / "emulator.toml"
        config.write_text(dump_config(dep.config))
        self.emu = EmulatorProcess(config, base / "emulator", private=True)
        self.d = Deployed(self.emu, dep)
        self.zone = dep.config.zone

    def close(self) -> None:
        self.emu.stop()
        self.hook.close()

    # -- helpers -------------------------------------------------------------------------

    def directive(self, text: str) -> None:
        path = self.dir / "directive"
        path.write_text(text + "\n")
        path.chmod(0o644)

    def now(self) -> float:
        """The emulator's clock."""
        return time.time() + self.emu.http.get("/_emulator/clock").json()["offset"]

    def executions(self) -> list[dict[str, Any]]:
        return chain.executions(self.emu, JOB)

    def gcloud(self, *args: str) -> str:
        r = self.emu.gcloud(*args, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"gcloud {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def set_task_timeout(self, seconds: int) -> None:
        self.gcloud(
            "run", "jobs", "update", JOB, f"--region={REGION}", f"--task-timeout={seconds}s"
        )

    def switch_env_secret(self, how: str) -> None:
        """`disable` (a failed boot: startup.sh cannot read the .env) or `enable` every version
        of the job's .env secret that is not so already."""
        state = "enabled" if how == "disable" else "disabled"
        for version in self.gcloud(
            "secrets", "versions", "list", "app-env", f"--filter=state:{state}",
            "--format=value(name)",
        ).split():  # fmt: skip
            self.gcloud("secrets", "versions", how, version, "--secret=app-env")

    def wait_started(self, key: str, timeout: float = 60) -> bool:
        """Until the job's run for KEY has started (its start line), at most TIMEOUT s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"start {key} 0" in self.runs_file.read_text():
                return True
            time.sleep(0.2)
        return False

    def running(self) -> list[dict[str, Any]]:
        return [e for e in self.executions() if not e["done"]]

    def wait_quiet(self, timeout: float = 600) -> None:
        """Until every execution of the job has ended and no delivery is left to come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return
            time.sleep(0.3)
        raise RuntimeError(f"executions still running after {timeout} s: {self.running()}")

    def own_processes(self) -> list[tuple[int, bytes, list[bytes]]]:
        """This soak's tasks and guests (pid, command line, environment): the processes in its
        emulator's private network that carry a task's or a guest's marker. Other emulators on
        the machine (a test suite running alongside) have networks of their own."""
        netns = os.readlink(f"/proc/{self.emu.env['GCP_EMULATOR_NETNS']}/ns/net")
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "net") != netns:
                    continue
                env = (entry / "environ").read_bytes().split(b"\0")
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if any(v.startswith((b"GCP_EMULATOR_TASK=", b"GCP_EMULATOR_GUEST=")) for v in env):
                out.append((int(entry.name), cmd, env))
        return out

    def kill_agent(self) -> int:
        """SIGKILL the agent's process on the VM (uvicorn fastapi_app:app of the guest)."""
        killed = 0
        for pid, cmd, env in self.own_processes():
            guest = any(v.startswith(b"GCP_EMULATOR_GUEST=") for v in env)
            if guest and b"uvicorn" in cmd and b"fastapi_app:app" in cmd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        return killed

    def leftover_processes(self) -> list[str]:
        return [
            f"{pid} {cmd.decode(errors='replace')[:120]}" for pid, cmd, _ in self.own_processes()
        ]

    # -- one slot -------------------------------------------------------------------------

    def run_slot(self, slot: Slot) -> None:
        emu = self.emu
        before = {e["name"] for e in self.executions()}
        alerts_before = len(self.hook.bodies)
        emu.move_clock(to=slot.at + 1)
        kinds = slot.kinds
        self.directive("ok")
        mid_run = slot.main in (
            "task-timeout",
            "task-cancelled",
            "preempted",
            "stopped-by-hand",
            "agent-killed",
            "operator",
        )
        if mid_run:
            self.directive(f"sleep {MID_RUN_SLEEP}")
        if slot.main == "task-timeout":
            self.directive(f"sleep {TASK_TIMEOUT * 2}")
            self.set_task_timeout(TASK_TIMEOUT)
        if slot.main == "job-fails":
            self.directive("fail")
        if slot.main == "stockout-long":
            emu.stockout(self.zone, count=-1)
        if slot.main == "boot-fails":
            self.switch_env_secret("disable")
        if "stockout-short" in kinds:
            emu.stockout(self.zone, count=2)
        if "api-burst" in kinds:
            first, second = self.rng.sample(BURST_APIS, 2)
            emu.fault(first, status=503, count=2)
            emu.fault(second, status=429, count=2)
        if "slow-detach" in kinds:
            emu.fault("compute.instances.deleteAccessConfig", status=None, count=1, delay=8)
        copies = 2 if "scheduler-duplicate" in kinds else 1
        slot.fault_at = self.now()
        if slot.main == "scheduler-dropped":
            self.fire(drop=True)
        elif slot.main == "scheduler-late":
            emu.move_clock(to=slot.at + START_DEADLINE + 30)
            slot.fault_at = self.now()
            self.fire(at=slot.at, copies=copies)
        else:
            self.fire(copies=copies)
        if slot.main == "task-killed":
            time.sleep(self.rng.uniform(0, 8))  # a slot's execution takes about 9 s
            for e in self.running():
                slot.fault_at = self.now()
                emu.http.post("/_emulator/run/kill", json={"execution": e["name"]})
        elif mid_run and self.wait_started(slot.key):
            slot.fault_at = self.now()
            if slot.main == "task-cancelled":
                for e in self.running():
                    self.gcloud(
                        "run", "jobs", "executions", "cancel", e["name"],
                        f"--region={REGION}", "--quiet", "--async",
                    )  # fmt: skip
            elif slot.main == "preempted":
                emu.set_instance(self.zone, JOB, preempt=True)
            elif slot.main == "stopped-by-hand":
                self.gcloud("compute", "instances", "stop", JOB, f"--zone={self.zone}", "--async")
            elif slot.main == "agent-killed":
                if not self.kill_agent():
                    slot.violations.append("no agent process to kill")
            elif slot.main == "operator":
                self.operator(slot)
        self.wait_quiet()
        time.sleep(0.5)
        self.wait_quiet()
        self.take_alerts(slot, alerts_before)
        # what the faults changed goes back
        emu.http.delete("/_emulator/stockouts")
        emu.http.delete("/_emulator/faults")
        if slot.main == "task-timeout":
            self.set_task_timeout(self.task_timeout)
        if slot.main == "boot-fails":
            self.switch_env_secret("enable")
        ops = {e["name"] for e in slot.operator}
        slot.executions = [
            e for e in self.executions() if e["name"] not in before and e["name"] not in ops
        ]
        what = {e["name"]: e["what"] for e in slot.operator}
        slot.operator = [
            {**e, "what": what[e["name"]]} for e in self.executions() if e["name"] in ops
        ]
        lines = self.runs_file.read_text().splitlines()
        slot.runs = lines.count(f"start {slot.key} 0")
        slot.finished = f"end {slot.key} 0" in lines
        # its check, at its time
        emu.move_clock(to=slot.at + CHECK_AFTER + 1)
        checks_before = {e["name"] for e in self.executions()}
        self.fire(job=CHECK_JOB)
        self.wait_quiet()
        new = [e for e in self.executions() if e["name"] not in checks_before]
        slot.check = new[0] if new else None
        slot.succeeded = check_code(slot) == 0  # the system's own verdict on the slot
        time.sleep(0.3)  # a notification is sent as the point arrives
        self.take_alerts(slot, alerts_before)

    def take_alerts(self, slot: Slot, since: int) -> None:
        """The incidents opened since the webhook's SINCE-th notification, when they arrived on
        the emulator's clock (the clock has not moved since they came)."""
        offset = self.emu.http.get("/_emulator/clock").json()["offset"]
        for n in range(since + slot.notifications, len(self.hook.bodies)):
            slot.notifications += 1
            if self.hook.bodies[n].get("incident", {}).get("state") == "open":
                slot.alerts.append(self.hook.arrived[n] + offset)

    def operator(self, slot: Slot) -> None:
        """A MODE=test run and a `status`, as an operator starts them during the slot's run."""
        names = []
        for flags in (["--update-env-vars=MODE=test"], ["--args=status"]):
            out = self.gcloud(
                "run", "jobs", "execute", JOB, f"--region={REGION}", "--async",
                "--format=value(metadata.name)", *flags,
            )  # fmt: skip
            names.append(out.strip())
        slot.operator = [{"name": n, "what": w} for n, w in zip(names, OPERATOR_CODES, strict=True)]

    def fire(self, job: str = SCHEDULER_JOB, **how: Any) -> dict[str, Any]:
        return chain.fire(self.emu, job, **how)

    # -- the whole soak -------------------------------------------------------------------

    def deploy(self) -> None:
        t0 = time.monotonic()
        self.d.sh("apply")
        described = json.loads(
            self.gcloud("run", "jobs", "describe", JOB, f"--region={REGION}", "--format=json")
        )
        spec = described["spec"]["template"]["spec"]["template"]["spec"]
        self.task_timeout = int(spec["timeoutSeconds"])
        say(f"deploy.sh apply: {time.monotonic() - t0:.1f} s (task timeout {self.task_timeout} s)")

    def first_slot(self) -> float:
        """The first slot: the next hour on the emulator's clock, a day on."""
        return (int(self.now()) // SLOT_SECONDS + 24) * SLOT_SECONDS


def vm_seconds_outside(
    journal: list[dict[str, Any]], executions: list[dict[str, Any]], since: float
) -> float:
    """Seconds the VM was up (PROVISIONING..RUNNING, before STOPPING) from SINCE on while no
    execution of the job (nor the operator's) ran, by the emulator's clock."""
    spans = sorted(
        (epoch_of(e["created"]), epoch_of(e["completed"]) if e["completed"] else float("inf"))
        for e in executions
    )
    up_since = None
    leaked = 0.0

    def outside(a: float, b: float) -> float:
        covered = 0.0
        for s, e in spans:
            lo, hi = max(a, s), min(b, e)
            if hi > lo:
                covered += hi - lo
        return max(0.0, (b - a) - covered)

    for entry in journal:
        if entry.get("event") != "status" or not str(entry.get("instance", "")).endswith(JOB):
            continue
        if entry["time"] < since:  # deploy.sh's VM, made and stopped before the first slot
            continue
        if entry["status"] in ("PROVISIONING", "STAGING", "RUNNING") and up_since is None:
            up_since = entry["time"]
        elif entry["status"] not in ("PROVISIONING", "STAGING", "RUNNING") and up_since:
            leaked += outside(up_since, entry["time"])
            up_since = None
    return leaked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help="the fault kinds to draw from (default: all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the soak's directory")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}: the kinds are {', '.join(FAULTS)}")
    if os.geteuid() != 0:
        parser.error("run as root: the emulator's private network needs it")
    say(f"seed {args.seed}, {args.slots} slots, fault kinds: {', '.join(kinds)}")
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="vm-job-soak-"))
    base.chmod(0o755)
    soak = Soak(base, args.seed)
    slots: list[Slot] = []
    verdict = 1
    try:
        soak.deploy()
        first = soak.first_slot()
        try:
            for i, (main_kind, pre) in enumerate(plan(args.slots, args.seed, kinds)):
                slot = Slot(i, first + i * SLOT_SECONDS, main_kind, pre)
                s0 = time.monotonic()
                soak.run_slot(slot)
                slots.append(slot)
                say(
                    f"slot {i + 1}/{args.slots} {slot.key[:-2]} {'+'.join(slot.kinds)}: "
                    f"{'succeeded' if slot.succeeded else 'not succeeded'}, runs {slot.runs}, "
                    f"codes {codes(slot)}, check {check_code(slot)}, alerts {len(slot.alerts)} "
                    f"({time.monotonic() - s0:.1f} s)"
                )
        except KeyboardInterrupt:
            say(f"interrupted: the report covers the {len(slots)} slots that ended")
            args.interrupted = True
        verdict = report(soak, slots, args, time.monotonic() - t0)
    finally:
        soak.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"kept {base}")
    return verdict


def codes(slot: Slot) -> list[int]:
    return [
        SIGKILL if a["exit_code"] is None or a["exit_code"] < 0 else a["exit_code"]
        for e in slot.executions
        for a in e["attempts"]
    ]


def check_code(slot: Slot) -> int | None:
    if slot.check is None or not slot.check["attempts"]:
        return None
    return slot.check["attempts"][-1]["exit_code"]


def report(soak: Soak, slots: list[Slot], args: argparse.Namespace, wall: float) -> int:
    state = soak.emu.state()
    journal = soak.emu.journal()
    all_runs = [e for e in state["run"]["executions"] if e["job"] == JOB]
    leaked = vm_seconds_outside(journal, all_runs, slots[0].at if slots else 0)
    inst = soak.emu.instance(JOB)
    attached = [a["name"] for a in state["addresses"] if a.get("users")]
    # the claim (orchestrator/claim.sh): <until>-<owner>[-<slot>], held until then
    held = (inst.get("labels") or {}).get("vm-job-owner", "")
    claim = held if held and int(held.split("-")[0]) >= soak.now() else ""
    left = soak.leftover_processes()
    for slot in slots:
        _, may_miss, allowed = FAULTS[slot.main]
        allowed = set(allowed) | (FAULTS[slot.pre][2] if slot.pre else set())
        if slot.runs > 1:
            slot.violations.append(f"the job ran {slot.runs} times")
        if slot.succeeded and not (slot.finished and slot.runs == 1):
            slot.violations.append("its check passed it, but its job did not run to its end")
        if not may_miss and not (slot.succeeded and slot.runs == 1):
            slot.violations.append("its faults allowed it, but it did not run once and succeed")
        if not slot.succeeded and not slot.alerts:
            slot.violations.append("did not succeed, and no alert came")
        if not slot.succeeded and check_code(slot) != 12:
            slot.violations.append(f"did not succeed, but its check exited {check_code(slot)}")
        odd = sorted(set(codes(slot)) - allowed)
        if odd:
            slot.violations.append(f"exit codes {odd} not among {sorted(allowed)}")
        for e in slot.operator:
            got = {a["exit_code"] for a in e["attempts"]} - OPERATOR_CODES[e["what"]]
            if got:
                slot.violations.append(f"the operator's {e['what']} exited {sorted(got)}")
    by_kind: dict[str, list[Slot]] = collections.defaultdict(list)
    for slot in slots:
        for kind in slot.kinds:
            by_kind[kind].append(slot)
    interrupted = " (interrupted)" if getattr(args, "interrupted", False) else ""
    print(f"soak: seed {args.seed}, {len(slots)} slots{interrupted}, wall {wall:.0f} s")
    print(
        f"{'fault kind':<20} {'slots':>5} {'ok':>4} {'runs':>4} {'double':>6} {'no alert':>8} "
        f"{'to alert (s)':>12}  exit codes (attempts)"
    )

    def row(name: str, group: list[Slot], seen: collections.Counter[int]) -> None:
        delays = [s.alerts[0] - s.fault_at for s in group if not s.succeeded and s.alerts]
        span = f"{min(delays):.0f}-{max(delays):.0f}" if delays else "-"
        print(
            f"{name:<20} {len(group):>5} {sum(s.succeeded for s in group):>4} "
            f"{sum(s.runs for s in group):>4} {sum(s.runs > 1 for s in group):>6} "
            f"{sum(not s.succeeded and not s.alerts for s in group):>8} {span:>12}  "
            + ", ".join(f"{'SIGKILL' if c == SIGKILL else c}x{n}" for c, n in sorted(seen.items()))
        )

    for kind in FAULTS:
        if by_kind.get(kind):
            row(
                kind, by_kind[kind], collections.Counter(c for s in by_kind[kind] for c in codes(s))
            )
    for what in OPERATOR_CODES:
        seen = collections.Counter(
            a["exit_code"]
            for s in slots
            for e in s.operator
            if e["what"] == what
            for a in e["attempts"]
        )
        if seen:
            print(f"  the operator's {what:<12}" + " " * 45 + ", ".join(
                f"{c}x{n}" for c, n in sorted(seen.items())
            ))  # fmt: skip
    checks = collections.Counter(str(check_code(s)) for s in slots)
    print(f"  the checks{' ' * 62}" + ", ".join(f"{c}x{n}" for c, n in sorted(checks.items())))
    ran = sum(s.runs for s in slots)
    print(
        f"total: {len(slots)} slots, {sum(s.succeeded for s in slots)} succeeded, job runs {ran}, "
        f"double runs {sum(s.runs > 1 for s in slots)}, "
        f"missed without alert {sum(not s.succeeded and not s.alerts for s in slots)}, "
        f"VM-seconds leaked {leaked:.1f}, left attached {len(attached)}, claim held "
        f"{1 if claim else 0}, processes left {len(left)}"
    )
    violations = [
        f"slot {s.index + 1} ({'+'.join(s.kinds)}): {v}" for s in slots for v in s.violations
    ]
    if leaked > 0:
        violations.append(f"the VM was up {leaked:.1f} s outside every execution")
    violations += [f"address {a} left attached" for a in attached]
    violations += [f"claim left held: {claim}"] if claim else []
    violations += [f"process left: {p}" for p in left]
    for v in violations:
        print(f"VIOLATION {v}")
    print(
        f"soak: {'FAILED' if violations else 'passed'} (seed {args.seed}: "
        f"bench/soak.py --slots {args.slots} --seed {args.seed} replays it)"
    )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""The soak's plan and its books (bench/soak.py), without running it: every fault kind lands at
least once in CI's twelve slots, a seed gives the same plan again, and the VM's seconds outside
every execution are counted from the journal as the soak counts them."""

from __future__ import annotations

import pytest

from bench.soak import FAULTS, PRE_WITH, plan, vm_seconds_outside


def test_twelve_slots_carry_every_fault_kind_and_a_seed_replays_its_plan():
    slots = plan(12, 1, list(FAULTS))
    kinds = {k for pair in slots for k in pair if k}
    assert kinds >= set(FAULTS) - {"none"}, sorted(set(FAULTS) - kinds)
    assert all(pre is None or main in PRE_WITH for main, pre in slots)
    assert all(FAULTS[main][0] == "main" and (pre is None or FAULTS[pre][0] == "pre")
               for main, pre in slots)  # fmt: skip
    assert plan(12, 1, list(FAULTS)) == slots
    assert plan(12, 2, list(FAULTS)) != slots


def test_a_plan_with_fewer_slots_than_fault_kinds_is_refused():
    with pytest.raises(SystemExit, match="at least 12 slots"):
        plan(5, 1, list(FAULTS))


def test_vm_seconds_outside_count_only_what_no_execution_covers():
    def status(t: float, s: str) -> dict:
        return {"event": "status", "instance": "z/vm-job-runner", "status": s, "time": t}

    journal = [
        status(50, "RUNNING"),  # deploy.sh's own boot, before the first slot
        status(60, "STOPPING"),
        status(1000, "PROVISIONING"),
        status(1001, "RUNNING"),
        status(1020, "STOPPING"),  # within the execution
        status(1022, "TERMINATED"),
        status(2000, "RUNNING"),  # started by something else: 30 s up, 10 s of it uncovered
        status(2030, "STOPPING"),
    ]
    executions = [
        {"created": "1970-01-01T00:16:39Z", "completed": "1970-01-01T00:17:05Z"},  # 999-1025
        {"created": "1970-01-01T00:33:30Z", "completed": "1970-01-01T00:33:40Z"},  # 2010-2020
        {"created": "1970-01-01T00:33:45Z", "completed": "1970-01-01T00:34:00Z"},  # 2025-2040
    ]
    assert vm_seconds_outside(journal, executions, since=900) == 15

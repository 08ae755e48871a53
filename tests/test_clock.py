"""The clock the emulator can move forward (gcp_emulator/core/clock.py) and the parts of the flow
that read it: the emulator's own time, the offset its tasks and guests get, the orchestrator's
`epoch` and slot, the agent's start_by. No server, no gcloud."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from gcp_emulator.core import clock
from gcp_emulator.core.util import stamp
from tests.harness import TOKEN
from tests.test_slot import config_only

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def moved() -> Iterator[None]:
    yield
    clock._offset = 0  # the clock is the process's: the next test starts on the real one


def test_the_clock_moves_forward_whole_seconds_and_tells_tasks_and_guests(moved):
    assert clock.offset() == 0 and clock.env() == {}
    at = clock.advance(by=3599.2)
    assert clock.offset() == 3600
    assert clock.env() == {"VM_JOB_CLOCK_OFFSET": "3600"}
    assert abs(clock.now() - time.time() - 3600) < 1 and abs(at - clock.now()) < 1
    assert stamp().startswith(
        datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H")
    )
    target = time.time() + 86400 * 2
    clock.advance(to=target)
    assert 0 <= clock.now() - target < 2


def test_the_clock_refuses_to_move_back_and_stays_where_it_was(moved):
    clock.advance(by=60)
    with pytest.raises(clock.ClockError, match="only forward"):
        clock.advance(to=time.time())
    assert clock.offset() == 60


def test_epoch_and_the_slot_follow_the_offset_the_emulator_gives_a_task():
    r = config_only(
        'check_config; echo "EPOCH=$(epoch)"; slot_setup; echo "KEY=$RUN_KEY"',
        SCHEDULE="0 * * * *",
        TIME_ZONE="UTC",
        VM_JOB_CLOCK_OFFSET=str(3 * 86400),
    )
    assert r.returncode == 0, r.stderr
    epoch = int(r.stdout.split("EPOCH=")[1].split()[0])
    assert abs(epoch - (time.time() + 3 * 86400)) < 5
    hour = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:00Z")
    assert f"KEY={hour}/0" in r.stdout, r.stdout


def test_the_agent_takes_start_by_on_the_moved_clock(agent, tmp_path, monkeypatch):
    marker = tmp_path / "runs"
    client = agent(job_command=f"echo x >> {marker}")
    # ten minutes ahead of the real time is an hour behind the emulator's moved clock
    start_by = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setenv("VM_JOB_CLOCK_OFFSET", "4200")
    body = {"mode": "run", "start_by": start_by}
    r = client.post("/runs", json=body, headers={"Idempotency-Key": "slot-b/0", **AUTH})
    assert r.status_code == 412, r.text
    assert not marker.exists()
    monkeypatch.setenv("VM_JOB_CLOCK_OFFSET", "0")
    r = client.post("/runs", json=body, headers={"Idempotency-Key": "slot-b/0", **AUTH})
    assert r.status_code == 202, r.text

"""The emulator's wall clock, which a test may move forward (bench/soak.py: a week of hourly
slots in well under an hour of real time).

Every part of the flow takes the time from its own clock: the orchestrator its slot, its claim's
lapse and its deadlines, the agent a run's `start_by`, startup.sh its boot id, and the emulator
its timestamps (lastStartTimestamp, an execution's times, the scheduler's slot, Monitoring's
points). A clock moved for one of them alone would make them disagree. So the emulator keeps an
offset from the real time, reads its own time through `now()`, and starts every task and guest
with `VM_JOB_CLOCK_OFFSET` (whole seconds), which our scripts (logging.sh's `epoch`, startup.sh)
and the agent (agent/store.py's `utcnow`) add to the system clock. Nothing else reads it: on
Google Cloud it is never set.

The offset is a process's from its start: move the clock only while no task runs and no VM is up
(a process started before a move keeps the time it had). Only the wall clock moves: time spans
(sleeps, timeouts, monotonic clocks) stay real. It moves only forward, and only when a test asks
(POST /_emulator/clock).

Libfaketime would move the clock of every process without their help, but the one Debian ships
(0.9.10) breaks Python's sleeps (EINVAL) and timed waits (a hang) once it is preloaded: it cannot
be put under gcloud or uvicorn.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

VARIABLE = "VM_JOB_CLOCK_OFFSET"
_offset = 0


class ClockError(Exception):
    pass


def now() -> float:
    """Seconds since the epoch on the emulator's clock."""
    return time.time() + _offset


def utcnow() -> datetime:
    return datetime.fromtimestamp(now(), UTC)


def offset() -> int:
    """Seconds the clock is ahead of the real time (0 until a test moves it)."""
    return _offset


def env() -> dict[str, str]:
    """What a task or a guest is started with to keep the emulator's clock ({} while real)."""
    return {VARIABLE: str(_offset)} if _offset else {}


def advance(to: float | None = None, by: float | None = None) -> float:
    """Move the clock forward to the epoch TO, or BY seconds (rounded up to a whole second, so
    that the shells' `date +%s` plus the offset agrees with it); returns the new time.
    ClockError for a move backwards."""
    global _offset
    step = (to - now()) if to is not None else float(by or 0)
    if step < 0:
        raise ClockError(f"the clock moves only forward ({step:.3f} s asked)")
    _offset += int(-(-step // 1))
    return now()

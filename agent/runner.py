"""Runs the job in a child process, one run at a time, and keeps its record up to date.

The child is `python main.py [--test]` in a new session (so its own process group), with its
stdout and stderr appended to the run's log file. Every process of a run carries
VM_JOB_RUN=<run id> in its environment, so the run's processes are found wherever they went
(their own session, a double fork). A timeout or a cancel sends SIGTERM to all of them and
gives them KILL_GRACE seconds, then SIGKILL; what the job leaves behind when it exits gets the
same. A run's end that cannot be written (a full disk) is kept in memory, answered as the
run's state, and written as soon as the store takes it: the agent never wedges on it. The idle
watchdog runs SHUTDOWN_COMMAND after IDLE_SHUTDOWN seconds with no run and no authenticated
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from agent.settings import APP_DIR, Settings
from agent.store import (
    ACTIVE,
    RunRecord,
    RunStore,
    cap_log,
    current_boot_id,
    new_run_id,
    now_iso,
    utcnow,
)

logger = logging.getLogger(__name__)

MODES = ("run", "test")
# A retried key gets its earlier run back, however it ended: a job that failed after it started
# may have placed orders, so it is not started again unless the caller says it may be
# (rerun_failed); a run going or succeeded is always returned.
REPLAYABLE = (ACTIVE, "succeeded")


RUN_MARKER = "VM_JOB_RUN"  # in the environment of every process of a run: VM_JOB_RUN=<id>


class StoreError(Exception):
    """The run store cannot be written (a full disk, most often): nothing was started."""


class KeyConflict(Exception):
    """An Idempotency-Key already used for a run of another mode."""

    def __init__(self, key: str, earlier: RunRecord) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was used for a {earlier.mode} run ({earlier.id});"
            " use a new key for another mode"
        )
        self.earlier = earlier


class TooLate(Exception):
    """A new run was asked for after the time its caller gave as the latest (start_by)."""

    def __init__(self, start_by: datetime) -> None:
        late = (utcnow() - start_by).total_seconds()
        super().__init__(
            f"not starting a new run {late:.0f} s after start_by"
            f" ({start_by.isoformat().replace('+00:00', 'Z')})"
        )


class BusyError(Exception):
    """Another run is in progress."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is in progress")
        self.run_id = run_id


@dataclass
class _ActiveRun:
    run_id: str
    proc: asyncio.subprocess.Process
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None  # "cancel", "timeout" or "shutdown" once we stop it
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # set once a stop is through


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send sig to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_processes(run_id: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds VM_JOB_RUN=run_id: the job and all
    it started, in whatever process group or session they are now."""
    needle = f"{RUN_MARKER}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def process_group(pid: int) -> int | None:
    """The process group of pid, or None when it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal_run(run_id: str, pgid: int | None, sig: signal.Signals) -> None:
    """sig to the run's process group and to every process of the run outside it, once each: a
    job's SIGTERM handler (closing positions) must run once, not once per way it is reached."""
    if pgid is not None:
        _signal_group(pgid, sig)
    for pid in run_processes(run_id):
        if pgid is not None and process_group(pid) == pgid:
            continue  # the group's signal reached it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def end_run_processes(
    run_id: str,
    pgid: int | None,
    grace: float,
    main: asyncio.subprocess.Process | None = None,
    term: bool = True,
) -> int:
    """SIGTERM every process of the run (unless term is False: they had theirs), SIGKILL what
    is left after grace seconds; returns how many were still there for SIGKILL."""
    if term:
        _signal_run(run_id, pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if (main is None or main.returncode is not None) and not run_processes(run_id):
            return 0
        await asyncio.sleep(0.05)
    left = len(run_processes(run_id))
    if left:
        _signal_run(run_id, pgid, signal.SIGKILL)
    return left


def _last_line(path: Path, limit: int = 200) -> str:
    """The last non-empty line of a log, shortened, to give an error some context."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        job_env: Mapping[str, str] | None = None,
        job_argv: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.job_env = dict(job_env or {})
        self.job_argv = job_argv or [sys.executable, "-u", str(APP_DIR / "main.py")]
        self._active: _ActiveRun | None = None
        self._start_lock = asyncio.Lock()
        self._last_activity = time.monotonic()
        # ends of runs the store could not take yet (a full disk): id -> final record
        self._unrecorded: dict[str, RunRecord] = {}
        self._flusher: asyncio.Task[None] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._active is not None

    def touch(self) -> None:
        """Note activity: the idle watchdog counts from the last call."""
        self._last_activity = time.monotonic()

    def get(self, run_id: str) -> RunRecord | None:
        """The run's record, with an end not yet written to the store (a full disk) applied."""
        return self._unrecorded.get(run_id) or self.store.get(run_id)

    def recent(self, limit: int) -> list[RunRecord]:
        return [self._unrecorded.get(r.id, r) for r in self.store.recent(limit)]

    async def recover(self) -> None:
        """At start-up: a run still `running` in the store was cut off when the agent died.
        Its process group, if it outlived the agent (same boot only), ends as on a cancel:
        SIGTERM, then SIGKILL after KILL_GRACE seconds."""
        boot_id = current_boot_id()
        for rec in self.store.active():
            same_boot = rec.pid and rec.boot_id == boot_id
            if same_boot and (_group_alive(rec.pid) or run_processes(rec.id)):  # type: ignore[arg-type]
                logger.warning("run %s: its processes outlived the agent; ending them", rec.id)
                await end_run_processes(rec.id, rec.pid, self.settings.kill_grace)
            self._record_end(
                replace(rec, status="interrupted", error="the agent stopped during the run")
            )
            logger.warning("run %s was running when the agent stopped: marked interrupted", rec.id)

    # -- starting ----------------------------------------------------------------------------

    def _child_env(self, record: RunRecord, run_slot: str | None = None) -> dict[str, str]:
        env = {**self.job_env, **os.environ}
        for name in [k for k in env if k.upper() == "AGENT_TOKEN"]:  # any spelling of it
            del env[name]
        if self.settings.job_command is not None:
            env["JOB_COMMAND"] = self.settings.job_command
        env["PYTHONUNBUFFERED"] = "1"
        env["RUN_ID"] = record.id
        env["RUN_MODE"] = record.mode
        # the same across a slot's duplicates and retries: for deterministic order IDs
        env["RUN_KEY"] = record.idempotency_key or record.id
        if run_slot is not None:
            env["RUN_SLOT"] = run_slot
        env[RUN_MARKER] = record.id
        return env

    async def start(
        self,
        mode: str,
        idempotency_key: str | None,
        run_slot: str | None = None,
        rerun_failed: bool = False,
        start_by: datetime | None = None,
    ) -> tuple[RunRecord, bool]:
        """Start a run; returns (record, created). Raises BusyError while another one runs. An
        Idempotency-Key used before returns its latest run, unless that run failed, was
        cancelled or interrupted and rerun_failed says the job may run again. A new run is not
        started after start_by (TooLate): a run given back is not new."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        async with self._start_lock:
            if idempotency_key is not None:
                earlier = self.store.latest_for_key(idempotency_key)
                if earlier is not None:
                    earlier = self._unrecorded.get(earlier.id, earlier)
                    if earlier.mode != mode:
                        raise KeyConflict(idempotency_key, earlier)
                if earlier is not None and (earlier.status in REPLAYABLE or not rerun_failed):
                    logger.info(
                        "key %r: returning run %s (%s)", idempotency_key, earlier.id, earlier.status
                    )
                    return earlier, False
            if self._active is not None:
                raise BusyError(self._active.run_id)
            if start_by is not None and utcnow() > start_by:
                raise TooLate(start_by)
            try:
                record = self.store.create(new_run_id(), mode, idempotency_key)
            except (sqlite3.Error, OSError) as exc:
                logger.error("could not record a new run: %s", exc)
                raise StoreError(str(exc)) from exc
            argv = self.job_argv + (["--test"] if mode == "test" else [])
            try:
                with self.store.log_path(record.id).open("ab") as log:
                    proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=asyncio.subprocess.STDOUT,
                        env=self._child_env(record, run_slot),
                        cwd=APP_DIR,
                        start_new_session=True,
                    )
            except OSError as exc:
                logger.error("run %s: could not start the job: %s", record.id, exc)
                self._record_end(
                    replace(record, status="failed", error=f"could not start the job: {exc}")
                )
                return self.get(record.id), True  # type: ignore[return-value]
            with contextlib.suppress(
                sqlite3.Error, OSError
            ):  # only recovery after a crash needs it
                self.store.set_pid(record.id, proc.pid)
            active = _ActiveRun(record.id, proc)
            self._active = active
            self.touch()
            logger.info("run %s started (mode=%s, pid=%d)", record.id, mode, proc.pid)
            asyncio.get_running_loop().create_task(self._supervise(active))
            return self.store.get(record.id), True  # type: ignore[return-value]

    # -- while it runs -----------------------------------------------------------------------

    async def _supervise(self, active: _ActiveRun) -> None:
        started = time.monotonic()
        capper = asyncio.get_running_loop().create_task(self._cap_log(active.run_id))
        try:
            await asyncio.wait_for(asyncio.shield(active.proc.wait()), self.settings.job_timeout)
        except TimeoutError:
            logger.warning(
                "run %s: timed out after %g s, stopping it",
                active.run_id,
                self.settings.job_timeout,
            )
            await self._terminate(active, "timeout")
        if active.stop_reason is not None:  # the job's first process is gone, not its tree
            await active.stopped.wait()
        rc = active.proc.returncode
        # The job is over: whatever it left running (in its group or not) goes with it, with the
        # same grace; after a stop we asked for, they had their SIGTERM and their grace: SIGKILL.
        stopped = active.stop_reason is not None
        grace = 0.0 if stopped else self.settings.kill_grace
        killed = await end_run_processes(active.run_id, active.proc.pid, grace, term=not stopped)
        if killed:
            logger.warning("run %s: %d leftover processes killed", active.run_id, killed)
        capper.cancel()
        self._cap_log_once(active.run_id)
        status, error = self._outcome(active, rc)
        record = self.store.get(active.run_id)
        if record is not None:
            self._record_end(replace(record, status=status, exit_code=rc, error=error))
        self._active = None
        self.touch()
        active.done.set()
        self.prune()
        logger.info(
            "run %s %s in %.2f s (exit code %s)%s",
            active.run_id,
            status,
            time.monotonic() - started,
            rc,
            f": {error}" if error else "",
        )

    def _outcome(self, active: _ActiveRun, rc: int | None) -> tuple[str, str | None]:
        if active.stop_reason == "cancel":
            return "cancelled", "cancelled by request"
        if active.stop_reason == "timeout":
            return "failed", (
                f"timed out after {self.settings.job_timeout:g} s (JOB_TIMEOUT);"
                " the job was stopped"
            )
        if active.stop_reason == "shutdown":
            return "interrupted", "the agent stopped during the run"
        if rc == 0:
            return "succeeded", None
        if rc is None or rc > 0:
            how = f"exit code {rc}"
        else:
            how = f"killed by {signal.Signals(-rc).name}"
        context = _last_line(self.store.log_path(active.run_id))
        return "failed", f"job failed ({how})" + (f": {context}" if context else "")

    async def _terminate(self, active: _ActiveRun, reason: str) -> None:
        """SIGTERM every process of the run; SIGKILL what is left after KILL_GRACE seconds
        (the whole tree gets the grace, not only the job's first process)."""
        if active.stop_reason is not None:  # a stop is under way: wait for it
            await active.stopped.wait()
            return
        active.stop_reason = reason
        left = await end_run_processes(
            active.run_id, active.proc.pid, self.settings.kill_grace, active.proc
        )
        if left:
            logger.warning(
                "run %s: %d processes still running %g s after SIGTERM, sent SIGKILL",
                active.run_id,
                left,
                self.settings.kill_grace,
            )
        await active.proc.wait()
        active.stopped.set()

    # -- the disk over months ----------------------------------------------------------------

    async def _cap_log(self, run_id: str) -> None:
        """While the run goes, keep its log to LOG_MAX_BYTES on disk (checked twice a second)."""
        while True:
            await asyncio.sleep(0.5)
            self._cap_log_once(run_id)

    def _cap_log_once(self, run_id: str) -> None:
        try:
            dropped = cap_log(self.store.log_path(run_id), self.settings.log_max_bytes)
        except OSError as exc:
            logger.warning("run %s: %s", run_id, exc)
            return
        if dropped:
            logger.info("run %s: log over LOG_MAX_BYTES, its start dropped from disk", run_id)

    def prune(self) -> None:
        """Remove old runs' records and logs (KEEP_RUNS, KEEP_DAYS); a full disk only skips it."""
        try:
            gone = self.store.prune(self.settings.keep_runs, self.settings.keep_days)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("could not prune old runs: %s", exc)
            return
        if gone:
            logger.info("pruned %d old runs (KEEP_RUNS, KEEP_DAYS)", len(gone))

    # -- recording a run's end ---------------------------------------------------------------

    def _record_end(self, final: RunRecord) -> None:
        """Write the run's end; when the store cannot take it (a full disk), the run ends now
        all the same (failed, saying why), and the end is written as soon as it can be."""
        if final.finished_at is None:
            final = replace(final, finished_at=now_iso())
        try:
            self.store.finish(final.id, final.status, final.exit_code, final.error)
            self._unrecorded.pop(final.id, None)
            return
        except (sqlite3.Error, OSError) as exc:
            if final.id not in self._unrecorded:
                outcome = f"{final.status}, exit code {final.exit_code}"
                final = replace(
                    final,
                    status="failed",
                    error=f"the agent could not record the run's end ({exc}); it ended {outcome}"
                    + (f": {final.error}" if final.error else ""),
                )
                logger.error("run %s: %s; will retry", final.id, final.error)
                self._unrecorded[final.id] = final
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_unrecorded())

    async def _flush_unrecorded(self) -> None:
        while self._unrecorded:
            await asyncio.sleep(1.0)
            for final in list(self._unrecorded.values()):
                try:
                    self.store.finish(final.id, final.status, final.exit_code, final.error)
                except (sqlite3.Error, OSError):
                    break
                self._unrecorded.pop(final.id, None)
                logger.info("run %s: its end is recorded now (%s)", final.id, final.status)

    async def wait(self, run_id: str, timeout: float | None) -> RunRecord | None:
        """The run's record once it has ended, or after timeout seconds (None: no limit)."""
        active = self._active
        if active is not None and active.run_id == run_id and (timeout is None or timeout > 0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.done.wait(), timeout)
        return self.get(run_id)

    async def cancel(self, run_id: str) -> RunRecord | None:
        """Stop the run if it is going and return its final record; a no-op on an ended run."""
        active = self._active
        if active is not None and active.run_id == run_id:
            logger.warning("run %s: cancel requested", run_id)
            await self._terminate(active, "cancel")
            await active.done.wait()
        return self.get(run_id)

    async def shutdown(self) -> None:
        """The agent is stopping: end a run still going and record it as interrupted."""
        active = self._active
        if active is not None:
            logger.warning("run %s: the agent is stopping, ending the job", active.run_id)
            await self._terminate(active, "shutdown")
            await active.done.wait()

    # -- the safety net ----------------------------------------------------------------------

    async def idle_watchdog(self) -> None:
        """Run SHUTDOWN_COMMAND after IDLE_SHUTDOWN seconds idle; never while a run is going."""
        limit = self.settings.idle_shutdown
        if limit <= 0:
            logger.info("idle shutdown is off (IDLE_SHUTDOWN=0)")
            return
        self.touch()
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            if self.busy:
                self.touch()
                continue
            idle_for = time.monotonic() - self._last_activity
            if idle_for < limit:
                continue
            logger.critical(
                "IDLE SHUTDOWN: no run and no authenticated request for %.0f s"
                " (IDLE_SHUTDOWN=%g); running SHUTDOWN_COMMAND: %s",
                idle_for,
                limit,
                self.settings.shutdown_command,
            )
            await self._run_shutdown_command()
            self.touch()  # if the machine is still up after this, try again one period later

    async def _run_shutdown_command(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", self.settings.shutdown_command, stdin=asyncio.subprocess.DEVNULL
            )
            rc = await proc.wait()
        except OSError as exc:
            logger.error("SHUTDOWN_COMMAND could not be started: %s", exc)
            return
        if rc != 0:
            logger.error("SHUTDOWN_COMMAND exited with code %d", rc)

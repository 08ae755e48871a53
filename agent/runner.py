"""Runs the job in a child process, one run at a time, and keeps its record up to date.

The child is `python main.py [--test]` in a new session (so its own process group), with its
stdout and stderr appended to the run's log file. A timeout or a cancel sends SIGTERM to the
whole group, then SIGKILL after KILL_GRACE seconds. Processes the job leaves behind in its
group are killed when it exits. The idle watchdog runs SHUTDOWN_COMMAND after IDLE_SHUTDOWN
seconds with no run and no authenticated request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.settings import APP_DIR, Settings
from agent.store import ACTIVE, RunRecord, RunStore, current_boot_id, new_run_id

logger = logging.getLogger(__name__)

MODES = ("run", "test")
# A retried key gets its earlier run back while that run is going or has succeeded; after a
# failure, a cancel or an interruption the same key starts a new run.
REPLAYABLE = (ACTIVE, "succeeded")


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

    # -- state -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._active is not None

    def touch(self) -> None:
        """Note activity: the idle watchdog counts from the last call."""
        self._last_activity = time.monotonic()

    async def recover(self) -> None:
        """At start-up: a run still `running` in the store was cut off when the agent died.
        Its process group, if it outlived the agent (same boot only), ends as on a cancel:
        SIGTERM, then SIGKILL after KILL_GRACE seconds."""
        boot_id = current_boot_id()
        for rec in self.store.active():
            if rec.pid and rec.boot_id == boot_id and _signal_group(rec.pid, signal.SIGTERM):
                logger.warning(
                    "run %s: its process group %d outlived the agent; ending it", rec.id, rec.pid
                )
                deadline = time.monotonic() + self.settings.kill_grace
                while time.monotonic() < deadline and _group_alive(rec.pid):
                    await asyncio.sleep(0.05)
                _signal_group(rec.pid, signal.SIGKILL)
            self.store.finish(rec.id, "interrupted", None, "the agent stopped during the run")
            logger.warning("run %s was running when the agent stopped: marked interrupted", rec.id)

    # -- starting ----------------------------------------------------------------------------

    def _child_env(self, record: RunRecord) -> dict[str, str]:
        env = {**self.job_env, **os.environ}
        env.pop("AGENT_TOKEN", None)
        if self.settings.job_command is not None:
            env["JOB_COMMAND"] = self.settings.job_command
        env["PYTHONUNBUFFERED"] = "1"
        env["RUN_ID"] = record.id
        env["RUN_MODE"] = record.mode
        return env

    async def start(self, mode: str, idempotency_key: str | None) -> tuple[RunRecord, bool]:
        """Start a run; returns (record, created). Raises BusyError while another one runs."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        async with self._start_lock:
            if idempotency_key is not None:
                earlier = self.store.latest_for_key(idempotency_key)
                if earlier is not None and earlier.status in REPLAYABLE:
                    logger.info(
                        "key %r: returning run %s (%s)", idempotency_key, earlier.id, earlier.status
                    )
                    return earlier, False
            if self._active is not None:
                raise BusyError(self._active.run_id)
            record = self.store.create(new_run_id(), mode, idempotency_key)
            argv = self.job_argv + (["--test"] if mode == "test" else [])
            try:
                with self.store.log_path(record.id).open("ab") as log:
                    proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=asyncio.subprocess.STDOUT,
                        env=self._child_env(record),
                        cwd=APP_DIR,
                        start_new_session=True,
                    )
            except OSError as exc:
                self.store.finish(record.id, "failed", None, f"could not start the job: {exc}")
                logger.error("run %s: could not start the job: %s", record.id, exc)
                return self.store.get(record.id), True  # type: ignore[return-value]
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
        try:
            await asyncio.wait_for(asyncio.shield(active.proc.wait()), self.settings.job_timeout)
        except TimeoutError:
            logger.warning(
                "run %s: timed out after %g s, stopping it",
                active.run_id,
                self.settings.job_timeout,
            )
            await self._terminate(active, "timeout")
        rc = active.proc.returncode
        # The job is over: whatever it left running in its group goes with it.
        _signal_group(active.proc.pid, signal.SIGKILL)
        status, error = self._outcome(active, rc)
        self.store.finish(active.run_id, status, rc, error)
        self._active = None
        self.touch()
        active.done.set()
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
        """SIGTERM the run's process group, SIGKILL it after KILL_GRACE seconds."""
        if active.stop_reason is None:
            active.stop_reason = reason
        pgid = active.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(active.proc.wait()), self.settings.kill_grace)
        except TimeoutError:
            logger.warning(
                "run %s: still running %g s after SIGTERM, sending SIGKILL",
                active.run_id,
                self.settings.kill_grace,
            )
            _signal_group(pgid, signal.SIGKILL)
            await active.proc.wait()

    async def wait(self, run_id: str, timeout: float | None) -> RunRecord | None:
        """The run's record once it has ended, or after timeout seconds (None: no limit)."""
        active = self._active
        if active is not None and active.run_id == run_id and (timeout is None or timeout > 0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.done.wait(), timeout)
        return self.store.get(run_id)

    async def cancel(self, run_id: str) -> RunRecord | None:
        """Stop the run if it is going and return its final record; a no-op on an ended run."""
        active = self._active
        if active is not None and active.run_id == run_id:
            logger.warning("run %s: cancel requested", run_id)
            await self._terminate(active, "cancel")
            await active.done.wait()
        return self.store.get(run_id)

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

"""Run records in SQLite under STATE_DIR; they outlive restarts of the agent and of the VM.

The file is `STATE_DIR/runs.sqlite3`; each run's combined stdout and stderr is
`STATE_DIR/logs/<id>.log`, kept to its last LOG_MAX_BYTES on disk (`cap_log` deallocates the
start, so byte offsets stay valid), and old runs are pruned by count and age (`prune`). Run
ids are 32 lowercase hex characters, checked with `is_valid_run_id` before they are ever
joined to a path. One agent per STATE_DIR: `lock_state_dir`.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
ACTIVE = "running"
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    idempotency_key TEXT,
    pid INTEGER,
    boot_id TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (idempotency_key, started_at);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
"""


BLOCK = 4096
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def cap_log(path: Path, max_bytes: int) -> int:
    """Keep a log's last max_bytes on disk: the blocks before them are deallocated (a hole that
    reads as zeros), so the file's size and every offset stay as they were. Returns the number
    of bytes dropped from the disk now (0 when under the cap)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0
    if st.st_blocks * 512 <= max_bytes + BLOCK:
        return 0
    drop = (st.st_size - max_bytes) // BLOCK * BLOCK
    if drop <= 0:
        return 0
    fd = os.open(path, os.O_WRONLY)
    try:
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, drop) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot cap {path.name}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return drop


def read_log_tail(path: Path, max_bytes: int) -> tuple[bytes, int]:
    """(the last max_bytes of a log, the offset they start at); (b"", 0) when there is none."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            return f.read(max_bytes), start
    except FileNotFoundError:
        return b"", 0


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_log_range(path: Path, start: int, length: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(start)
            return f.read(length)
    except FileNotFoundError:
        return b""


class StateDirBusy(Exception):
    """Another agent holds the lock on this STATE_DIR."""


def lock_state_dir(state_dir: Path) -> int:
    """Take STATE_DIR/agent.lock for this process (an open file descriptor: the lock lasts as
    long as it stays open). One agent per state directory: a second one would take the first
    one's live run for a dead one. Raises StateDirBusy, having touched nothing else."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirBusy(
            f"another agent (pid {holder}) is using STATE_DIR={state_dir.resolve()}:"
            " one agent per state directory; this one exits and touches nothing"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message above; a full disk must not stop the agent
    return fd


def utcnow() -> datetime:
    """The time on the clock the orchestrator sets a run's start_by by: the system's, plus
    VM_JOB_CLOCK_OFFSET seconds where the emulator has moved its clock (gcp_emulator/core/clock.py;
    never set on Google Cloud)."""
    return datetime.now(UTC) + timedelta(seconds=int(os.environ.get("VM_JOB_CLOCK_OFFSET") or 0))


def now_iso() -> str:
    return utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return secrets.token_hex(16)


def is_valid_run_id(run_id: str) -> bool:
    return RUN_ID_RE.fullmatch(run_id) is not None


def current_boot_id() -> str:
    """Linux's id of this boot, so a pid from another boot is never signalled."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class RunRecord:
    id: str
    mode: str
    status: str
    exit_code: int | None
    error: str | None
    started_at: str
    finished_at: str | None
    idempotency_key: str | None
    pid: int | None
    boot_id: str | None


_COLUMNS = ", ".join(f.name for f in fields(RunRecord))


class RunStore:
    """A small, thread-safe wrapper over one SQLite connection."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(state_dir / "runs.sqlite3", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit is on the disk before it returns, so a run the agent has accepted
        # (202) survives a hard reset right after; NORMAL could lose the last commits, and a
        # retry would start the job again
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def log_path(self, run_id: str) -> Path:
        if not is_valid_run_id(run_id):
            raise ValueError("malformed run id")
        return self.log_dir / f"{run_id}.log"

    def _query(self, sql: str, args: tuple = ()) -> list[RunRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [RunRecord(*row) for row in rows]

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock, self._db:
            self._db.execute(sql, args)

    def create(self, run_id: str, mode: str, idempotency_key: str | None) -> RunRecord:
        self._write(
            "INSERT INTO runs (id, mode, status, started_at, idempotency_key, boot_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, mode, ACTIVE, now_iso(), idempotency_key, current_boot_id()),
        )
        return self.get(run_id)  # type: ignore[return-value]

    def set_pid(self, run_id: str, pid: int) -> None:
        self._write("UPDATE runs SET pid = ? WHERE id = ?", (pid, run_id))

    def finish(self, run_id: str, status: str, exit_code: int | None, error: str | None) -> None:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        self._write(
            "UPDATE runs SET status = ?, exit_code = ?, error = ?, finished_at = ?"
            " WHERE id = ? AND status = ?",
            (status, exit_code, error, now_iso(), run_id, ACTIVE),
        )

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))  # noqa: S608
        return rows[0] if rows else None

    def latest_for_key(self, key: str) -> RunRecord | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM runs WHERE idempotency_key = ?"  # noqa: S608
            " ORDER BY started_at DESC, rowid DESC LIMIT 1",
            (key,),
        )
        return rows[0] if rows else None

    def recent(self, limit: int) -> list[RunRecord]:
        return self._query(
            f"SELECT {_COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?",  # noqa: S608
            (limit,),
        )

    def prune(self, keep_runs: int, keep_days: float) -> list[str]:
        """Delete the records and logs of ended runs beyond the newest keep_runs, or started more
        than keep_days ago; a running run is never touched. Returns the ids deleted."""
        cutoff = (utcnow() - timedelta(days=keep_days)).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        with self._lock:
            rows = self._db.execute(
                "SELECT id, started_at, status FROM runs ORDER BY started_at DESC, rowid DESC"
            ).fetchall()
        old = [
            run_id
            for n, (run_id, started, status) in enumerate(rows)
            if status != ACTIVE and (n >= keep_runs or started < cutoff)
        ]
        if not old:
            return []
        with self._lock, self._db:
            self._db.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in old])
        for run_id in old:
            try:
                self.log_path(run_id).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("could not remove the log of run %s: %s", run_id, exc)
        return old

    def active(self) -> list[RunRecord]:
        return self._query(f"SELECT {_COLUMNS} FROM runs WHERE status = ?", (ACTIVE,))  # noqa: S608

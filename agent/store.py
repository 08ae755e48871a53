"""Run records in SQLite under STATE_DIR; they outlive restarts of the agent and of the VM.

The file is `STATE_DIR/runs.sqlite3`; each run's combined stdout and stderr is
`STATE_DIR/logs/<id>.log`. Run ids are 32 lowercase hex characters and are checked with
`is_valid_run_id` before they are ever joined to a path.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

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


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        self._db.execute("PRAGMA synchronous=NORMAL")
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

    def active(self) -> list[RunRecord]:
        return self._query(f"SELECT {_COLUMNS} FROM runs WHERE status = ?", (ACTIVE,))  # noqa: S608

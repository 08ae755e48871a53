"""An instance's serial console (port 1), shared by every guest kind: an append-only file that
getSerialPortOutput reads by byte offset."""

from __future__ import annotations

import time
from pathlib import Path


class SerialPort:
    """The instance's serial console: an append-only file read by byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def write(self, line: str) -> None:
        stamp = time.strftime("%b %d %H:%M:%S")
        with self.path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(f"{stamp} {line}\n")

    def append(self, data: bytes) -> int:
        """Raw console bytes (the QEMU guest's ttyS0) at the end; returns where they begin."""
        with self.path.open("ab") as f:
            offset = f.tell()
            f.write(data)
        return offset

    def clear(self) -> None:
        """A start that does not keep the earlier boots' output (console_after_stop)."""
        self.path.write_bytes(b"")

    def read(self, start: int) -> tuple[str, int, int]:
        """(contents, start, next) as getSerialPortOutput answers them."""
        data = self.path.read_bytes()
        start = max(0, min(start, len(data)))
        return data[start:].decode("utf-8", "replace"), start, len(data)

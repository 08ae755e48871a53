"""The guest: what runs "inside" an emulated VM while it is RUNNING.

Like google-startup-scripts.service (GCP_REFERENCE.md section 3), a boot writes the
`startup-script` metadata value (leading whitespace trimmed) to a file with mode 0755 and runs
`/bin/bash -c FILE` as a new process group, in the instance's working directory. Its merged
stdout and stderr go to the serial port as `startup-script: <line>`.

Every process of a boot carries GCP_EMULATOR_GUEST=<boot token> in its environment, so a stop
finds them all, including those that started their own session (the agent's jobs do): SIGTERM
to all, SIGKILL to what is left after the grace period, as a VM's shutdown would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)
MARKER = "GCP_EMULATOR_GUEST"


class SerialPort:
    """The instance's serial console: an append-only file read by byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def write(self, line: str) -> None:
        stamp = time.strftime("%b %d %H:%M:%S")
        with self.path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(f"{stamp} {line}\n")

    def read(self, start: int) -> tuple[str, int, int]:
        """(contents, start, next) as getSerialPortOutput answers them."""
        data = self.path.read_bytes()
        start = max(0, min(start, len(data)))
        return data[start:].decode("utf-8", "replace"), start, len(data)


def processes_with_marker(token: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds MARKER=token."""
    needle = f"{MARKER}={token}".encode()
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


class Guest:
    """One boot of one instance."""

    def __init__(
        self, name: str, serial: SerialPort, workdir: Path, script_dir: Path, env: dict[str, str]
    ) -> None:
        self.name = name
        self.serial = serial
        self.workdir = workdir
        self.script_dir = script_dir
        self.token = secrets.token_hex(8)
        self.env = {**env, MARKER: self.token}
        self.proc: asyncio.subprocess.Process | None = None
        self.exit_status: int | None = None
        self._pump: asyncio.Task[None] | None = None

    def pids(self) -> list[int]:
        return processes_with_marker(self.token)

    async def boot(self, script: str | None) -> None:
        """Start the startup script (if any); returns once it is started."""
        self.serial.write(
            "google_metadata_script_runner: Starting startup scripts (version emulator)."
        )
        if not script or not script.strip():
            self.serial.write("google_metadata_script_runner: No startup scripts to run.")
            return
        self.serial.write("google_metadata_script_runner: Found startup-script in metadata.")
        path = self.script_dir / "startup-script"
        path.write_text(script.lstrip())
        path.chmod(0o755)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            "/bin/bash",
            "-c",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
            start_new_session=True,
        )
        logger.info("%s: startup script started (pid %d)", self.name, self.proc.pid)
        self._pump = asyncio.get_running_loop().create_task(self._pump_output(self.proc))

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # not spawned with a pipe: nothing to copy
            return
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.serial.write(f"google_metadata_script_runner: startup-script: {line}")
        rc = await proc.wait()
        self.exit_status = rc
        if rc == 0:
            self.serial.write("google_metadata_script_runner: startup-script exit status 0")
        else:
            self.serial.write(
                'google_metadata_script_runner: Script "startup-script" failed '
                f"with error: exit status {rc}"
            )
        self.serial.write("google_metadata_script_runner: Finished running startup scripts.")

    async def shutdown(self, grace: float) -> None:
        """SIGTERM every process of this boot, SIGKILL what is left after grace seconds."""
        self.serial.write("systemd[1]: Stopping google-startup-scripts.service...")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.pids()
        if left:
            logger.info(
                "%s: %d guest processes still up after %g s, SIGKILL", self.name, len(left), grace
            )
            self._signal_all(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.pids():  # in uninterruptible sleep: give up waiting, not the shutdown
                logger.error("%s: processes %s survived SIGKILL for 10 s", self.name, self.pids())
        if self.proc is not None and self.proc.returncode is None:
            await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump, 5)
        self.serial.write("systemd[1]: Reached target power-off.")

    def _signal_all(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill_now(self) -> None:
        """Synchronous last resort (the emulator is exiting): SIGKILL everything at once."""
        self._signal_all(signal.SIGKILL)

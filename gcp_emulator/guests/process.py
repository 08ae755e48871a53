"""The process guest: what runs "inside" an emulated VM while it is RUNNING, as a process group
on this host (the emulator's default guest kind, fast enough for every test).

Like google-startup-scripts.service and its script runner (docs/google-cloud.md, "The startup
script and its runner"; guest-agent's gce_metadata_script_runner), a boot writes the
`startup-script` metadata value (leading whitespace trimmed) to a file with mode 0755 in a fresh
temp directory and runs `/bin/bash -c FILE` as a new process group, in `/`, with umask 0022 and
the environment a system unit gets (no HOME, systemd's default PATH; cloud.guest_env). Its
output goes to the serial port in the runner's format (`runner`):
- "guest-agent" (the newer runner, the default): stdout and stderr apart, each line as
  `google_metadata_script_runner: <time> [INFO]: Metadata key("startup-script"),
  command("/bin/bash"): <line>`, [ERROR] for stderr (galog's serial format), read until the
  script's main process exits, then the pipes are closed (a leftover writer gets SIGPIPE);
- "legacy" (google_metadata_script_runner): both merged, `startup-script: <line>`;
- "debian-20211116" (Debian's package of it): the same, its last line `startup-script exit
  status N` whatever N (later versions: `Script "startup-script" failed with error: …`);
- "legacy-20240802" (the older runner from 20240802, its unit `StandardOutput=journal+console`):
  every line of the runner reaches the console twice, its own copy and, a line later, the
  journal's through syslog (`google_metadata_script_runner[PID]: …`).

Every process of a boot carries GCP_EMULATOR_GUEST=<boot token> in its environment, so a stop
finds them all, including those that started their own session (the agent's jobs do). A stop
goes as a VM's shutdown does (`shutdown`): SIGTERM to the startup script's process group (the
agent's unit, KillMode=mixed), then to whatever got none, SIGKILL to what is left after the
grace period: one SIGTERM a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gcp_emulator.core import clock
from gcp_emulator.guests.serial_port import SerialPort

logger = logging.getLogger(__name__)
MARKER = "GCP_EMULATOR_GUEST"
RUNNERS = ("guest-agent", "legacy", "debian-20211116", "legacy-20240802")
# the older runner: stdout and stderr in one pipe
MERGED = ("legacy", "debian-20211116", "legacy-20240802")
RUNNER = "google_metadata_script_runner"


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


class ProcessGuest:
    """One boot of one instance."""

    def __init__(
        self,
        name: str,
        serial: SerialPort,
        workdir: Path,
        script_dir: Path,
        env: dict[str, str],
        runner: str = "guest-agent",
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.name = name
        self.wrap = wrap or (lambda argv: argv)  # how it is started: in a private network
        self.serial = serial
        self.workdir = workdir
        self.script_dir = script_dir
        self.runner = runner
        self.token = secrets.token_hex(8)
        self.env = {**env, MARKER: self.token}
        self.proc: asyncio.subprocess.Process | None = None
        self.exit_status: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._second_copy: str | None = None  # legacy-20240802: the journal's copy, a line late

    def pids(self) -> list[int]:
        return processes_with_marker(self.token)

    def _log(self, level: str, message: str) -> None:
        """One line of the script runner on the serial port, in its format."""
        if self.runner == "legacy-20240802":
            self.serial.write(f"{RUNNER}: {message}")
            if self._second_copy is not None:
                self.serial.write(self._second_copy)
            self._second_copy = f"{RUNNER}[{os.getpid()}]: {message}"
        elif self.runner in MERGED:
            self.serial.write(f"{RUNNER}: {message}")
        else:
            when = clock.utcnow().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-2] + "Z"
            self.serial.write(f"{RUNNER}: {when} [{level}]: {message}")

    def _script_line(self, line: str, stream: str) -> None:
        if self.runner in MERGED:
            self._log("INFO", f"startup-script: {line}")
        else:
            level = "ERROR" if stream == "stderr" else "INFO"
            self._log(level, f'Metadata key("startup-script"), command("/bin/bash"): {line}')

    async def boot(self, script: str | None) -> None:
        """Start the startup script (if any); returns once it is started."""
        legacy = self.runner in MERGED
        if legacy:
            self._log("INFO", "Starting startup scripts (version emulator).")
        else:
            self._log("INFO", 'Running metadata script runner for "startup" event')
        if not script or not script.strip():
            self._log(
                "INFO", "No startup scripts to run." if legacy else "No startup scripts to run"
            )
            self._flush_second_copy()
            return
        self._log(
            "INFO",
            "Found startup-script in metadata." if legacy else "Found startup-script in metadata",
        )
        run_dir = Path(tempfile.mkdtemp(prefix="metadata-scripts", dir=self.script_dir))
        path = run_dir / "startup-script"
        path.write_text(script.lstrip())
        path.chmod(0o755)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *self.wrap(["/bin/bash", "-c", str(path)]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if legacy else asyncio.subprocess.PIPE,
            cwd="/",
            env=self.env,
            start_new_session=True,
            umask=0o022,
        )
        logger.info("%s: startup script started (pid %d)", self.name, self.proc.pid)
        self._pump = asyncio.get_running_loop().create_task(self._pump_output(self.proc))

    async def _pump_stream(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        async for raw in stream:
            self._script_line(raw.decode("utf-8", "replace").rstrip("\n"), name)

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        pumps = asyncio.gather(
            self._pump_stream(proc.stdout, "stdout"), self._pump_stream(proc.stderr, "stderr")
        )
        # The script's status is known when it exits; the runner's last lines come once every
        # process that holds its output (a daemon it started) has let go of it. (asyncio's
        # wait() would wait for the pipes too: the status is polled instead.)
        while proc.returncode is None:
            await asyncio.sleep(0.05)
        rc = self.exit_status = proc.returncode
        if self.runner in MERGED:
            await pumps
        else:
            # The newer runner (gce_metadata_script_runner) reads the script's output until its
            # main process exits, then closes the pipes: a process the script left behind that
            # writes to them later gets SIGPIPE (Go restores its default in the children).
            await asyncio.sleep(0.1)  # what was written before the exit
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
            transport = getattr(proc, "_transport", None)  # asyncio keeps the pipes there
            for fd in (1, 2):
                pipe = transport.get_pipe_transport(fd) if transport is not None else None
                if pipe is not None:
                    pipe.close()
        if self.runner in MERGED:
            if rc == 0 or self.runner == "debian-20211116":  # Debian's 20211116 says only that
                self._log("INFO", f"startup-script exit status {rc}")
            else:
                self._log("INFO", f'Script "startup-script" failed with error: exit status {rc}')
            self._log("INFO", "Finished running startup scripts.")
            self._flush_second_copy()
            return
        if rc != 0:
            self._log("WARNING", f'Script "startup-script" failed with error: exit status {rc}')
        self._log("INFO", "Finished running startup scripts")

    def _flush_second_copy(self) -> None:
        if self._second_copy is not None:
            self.serial.write(self._second_copy)
            self._second_copy = None

    async def shutdown(self, grace: float) -> None:
        """A VM's shutdown, as systemd goes through it: the services first, the startup script's
        process group here (the agent it runs in the foreground is what systemd stops with the
        agent's unit, KillMode=mixed: SIGTERM to it alone, and it ends its job), until it is gone
        or grace seconds pass; then SIGTERM to every process that has had none (systemd's last
        round), and SIGKILL to what is left when the grace is over (at least a second later).
        Each process gets one SIGTERM at most: a job's handler runs once, however the VM stops."""
        self._flush_second_copy()
        self.serial.write("systemd[1]: Stopping google-startup-scripts.service...")
        deadline = time.monotonic() + grace
        termed: set[int] = set()
        if self.proc is not None:
            group = self._group_members(self.proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            termed.update(group)
            while set(self.pids()) & group and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        rest = [pid for pid in self.pids() if pid not in termed]
        for pid in rest:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = max(deadline, time.monotonic() + 1) if rest else deadline
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

    def _group_members(self, pgid: int) -> set[int]:
        """This boot's processes in the process group pgid."""
        members = set()
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pgid:
                    members.add(pid)
        return members

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

"""The QEMU guest: an emulated VM that is a real one, Debian 12 under QEMU with Google's guest
environment (gcp_emulator/guests/vm_image.py builds its image), chosen with `guest = "qemu"` in the
emulator's configuration (docs/emulator.md, "Real VMs").

A start boots the VM from its own disk, a copy-on-write overlay on the shared image kept in the
instance's directory across stop and start, as a persistent disk is. The kernel's console
(ttyS0) is the instance's serial port. The network is QEMU's user-mode network, every host
socket of it on loopback:
- 169.254.169.254:80 inside is the metadata server: each connection runs
  gcp_emulator.metadata.relay, which carries it to the emulator with the VM's name in the path;
- the host address 169.254.169.1 is the host's loopback (a git server a test runs there);
- the VM's agent port is forwarded from the instance's address (its static IP once attached,
  else its internal IP) on this host, so callers reach it where they reach the process guest;
- DNS and everything else go out through this host: the package registries it reaches.

A stop presses the power button (QMP `system_powerdown`) and waits for QEMU to exit, SIGKILL
after the grace period (Compute Engine's 90 s); a `poweroff` inside ends QEMU the same way,
and the emulator then stops the instance as if asked through the API (on_exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gcp_emulator.guests.serial_port import SerialPort
from gcp_emulator.guests.vm_image import METADATA_IP, Image

# what QEMU runs for each connection to the metadata server's address (metadata/relay.py)
RELAY_MODULE = "gcp_emulator.metadata.relay"

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
NET = "169.254.169.0/24"
HOST_IP = "169.254.169.1"  # the host's loopback, seen from the VM
GRACE = 90.0  # seconds Compute Engine gives a guest to shut down before it is powered off
PREEMPT_GRACE = 30.0  # the same for a preempted Spot VM
ACCELS = ("tcg", "kvm")


def accelerator() -> str:
    """TCG unless GCP_EMULATOR_QEMU_ACCEL=kvm (a Linux guest hangs under KVM on some hosts:
    measured on ours, docs/emulator.md)."""
    accel = os.environ.get("GCP_EMULATOR_QEMU_ACCEL", "tcg")
    if accel not in ACCELS:
        raise ValueError(f"GCP_EMULATOR_QEMU_ACCEL must be tcg or kvm, not {accel!r}")
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        logger.warning("GCP_EMULATOR_QEMU_ACCEL=kvm but /dev/kvm is not usable: TCG")
        return "tcg"
    return accel


def qemu_missing() -> str | None:
    """Why a QEMU guest cannot run here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    return Image.missing()  # root, debootstrap, qemu-img


class QemuGuest:
    """One boot of one instance as a QEMU VM."""

    def __init__(
        self,
        name: str,
        serial: SerialPort,
        inst_dir: Path,
        image: Image,
        *,
        emulator_port: int,
        zone: str,
        instance: str,
        forwards: list[tuple[str, int]],
        machine: tuple[int, int] = (2, 2048),
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.serial = serial
        self.inst_dir = inst_dir
        self.image = image
        self.emulator_port = emulator_port
        self.zone = zone
        self.instance = instance
        self.forwards = forwards  # (host address, port): that port inside, on that address here
        self.machine = machine
        self.on_exit = on_exit
        self.proc: asyncio.subprocess.Process | None = None
        self.exit_status: int | None = None
        self.stopping = False
        self._pump: asyncio.Task[None] | None = None
        # a UNIX socket's path must be under 108 bytes: a short directory of its own
        self.qmp_dir = Path(tempfile.mkdtemp(prefix="qmp-"))
        self.qmp_path = self.qmp_dir / "qmp.sock"
        self.disk = inst_dir / "disk.qcow2"
        self.times = inst_dir / "serial-port-1.times"  # when each console line arrived

    def pids(self) -> list[int]:
        if self.proc is not None and self.proc.returncode is None:
            return [self.proc.pid]
        return []

    def _ensure_disk(self) -> None:
        """The VM's own disk: an overlay on the image, made at its first boot and kept."""
        if self.disk.exists():
            info = subprocess.run(
                ["qemu-img", "info", "--output=json", str(self.disk)],
                capture_output=True,
                text=True,
                check=False,
            )
            backing = (
                json.loads(info.stdout or "{}").get("backing-filename")
                if info.returncode == 0
                else None
            )
            if backing == str(self.image.disk):
                return
            logger.warning(
                "%s: its disk was made on another image (%s): a new disk", self.name, backing
            )
            self.disk.unlink()
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(self.image.disk),
                str(self.disk),
            ],
            check=True,
            capture_output=True,
        )

    def argv(self, accel: str) -> list[str]:
        relay_module = "gcp_emulator.metadata.relay"
        relay = (
            f"{sys.executable} -m {relay_module} {self.emulator_port} {self.zone} {self.instance}"
        )
        netdev = [
            "user",
            "id=net0",
            f"net={NET}",
            f"host={HOST_IP}",
            f"hostname={self.instance}",
            f"guestfwd=tcp:{METADATA_IP}:80-cmd:{relay}",
        ]
        netdev += [f"hostfwd=tcp:{addr}:{port}-:{port}" for addr, port in self.forwards]
        cpus, mem = self.machine
        return [
            "qemu-system-x86_64",
            "-accel",
            accel,
            "-machine",
            "pc",
            "-smp",
            str(cpus),
            "-m",
            str(mem),
            "-smbios",
            "type=1,manufacturer=Google,product=Google Compute Engine",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            f"root=/dev/vda rw console=ttyS0 systemd.hostname={self.instance}",
            "-drive",
            f"file={self.disk},if=virtio,format=qcow2,discard=unmap",
            "-netdev",
            ",".join(netdev),
            "-device",
            "virtio-net-pci,netdev=net0",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-no-reboot",
        ]

    async def boot(self, script: str | None) -> None:
        """Start QEMU; returns once it runs (the guest reads its startup-script itself)."""
        del script  # the guest's script runner fetches it from the metadata server
        await asyncio.to_thread(self._ensure_disk)
        self.qmp_path.unlink(missing_ok=True)
        accel = accelerator()
        self.serial.write(f"gcp_emulator: booting {self.instance} under QEMU ({accel})")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(accel),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        logger.info("%s: QEMU started (pid %d, %s)", self.name, self.proc.pid, accel)
        self._pump = asyncio.get_running_loop().create_task(self._pump_console(self.proc))

    async def _pump_console(self, proc: asyncio.subprocess.Process) -> None:
        """ttyS0 to the serial port, line by line (the tty's CR dropped), each line's arrival
        time beside it; QEMU's own errors too. Then, when QEMU ends on its own (a poweroff
        inside), the instance stops (on_exit)."""
        errors: list[str] = []
        out, err = proc.stdout, proc.stderr
        if out is None or err is None:
            raise RuntimeError("QEMU started without its pipes")

        async def console() -> None:
            with self.times.open("a") as times:
                async for raw in out:
                    line = raw.replace(b"\r", b"").rstrip(b"\n")
                    offset = self.serial.append(line + b"\n")
                    times.write(f"{time.time():.3f} {offset}\n")
                    times.flush()

        async def stderr() -> None:
            async for raw in err:
                errors.append(raw.decode("utf-8", "replace").rstrip())

        await asyncio.gather(console(), stderr())
        self.exit_status = await proc.wait()
        for line in errors[-20:]:
            logger.warning("%s: qemu: %s", self.name, line)
        if self.exit_status != 0 and not self.stopping:
            self.serial.write(
                f"gcp_emulator: QEMU exited with status {self.exit_status}: "
                + " | ".join(errors[-5:])
            )
        if not self.stopping and self.on_exit is not None:
            self.on_exit()

    async def _qmp(self, command: str) -> bool:
        """Send one QMP command; False when QEMU does not answer."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.qmp_path)), 5
            )
        except (OSError, TimeoutError):
            return False
        try:
            await asyncio.wait_for(reader.readline(), 5)  # the greeting
            for cmd in ("qmp_capabilities", command):
                writer.write(json.dumps({"execute": cmd}).encode() + b"\n")
                await writer.drain()
                while True:
                    answer = json.loads(await asyncio.wait_for(reader.readline(), 5) or b"{}")
                    if "return" in answer or "error" in answer or not answer:
                        break
            return True
        except (OSError, TimeoutError, ValueError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def shutdown(self, grace: float = GRACE) -> None:
        """The power button; SIGKILL if the guest has not powered off after grace seconds."""
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            pressed = await self._qmp("system_powerdown")
            logger.info("%s: power button %s", self.name, "pressed" if pressed else "not reached")
            try:
                await asyncio.wait_for(proc.wait(), grace if pressed else 0.1)
            except TimeoutError:
                self.serial.write(f"gcp_emulator: no power-off within {grace:g}s: hard stop")
                self.kill_now()
                await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump, 5)
        shutil.rmtree(self.qmp_dir, ignore_errors=True)

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

"""The emulator's private network: a network and mount namespace of its own (made as root with
`unshare`), where loopback is the only interface, every name gcloud uses resolves to loopback,
no DNS server answers, and the emulator's certificate authority is trusted (network/tls.py).
Nothing started there can send a packet or a name lookup off this machine: there is no route
to anything else.

gcloud puts the region before an endpoint's host for Cloud Run (`asia-northeast3-run
.googleapis.com`, or `asia-northeast3-127.0.0.1` from an override), a name it then resolves:
inside, /etc/hosts (bind-mounted over the machine's) maps Google's names, and those regional
ones for every region, to 127.0.0.1, and 169.254.169.254 (the metadata server) is on loopback
too. So gcloud there needs no endpoint override at all: the emulator answers Google's own names
over TLS.

The emulator itself stays outside (its test hooks answer on the machine's loopback only, not
on the sockets inside: core/app.py, WithoutHooks): it makes its listening sockets inside by
entering the namespace for a moment (setns, this thread only), and starts what must run inside
(the guests, the Cloud Run tasks, `run`'s command) under `nsenter`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from gcp_emulator.network.tls import Certificates

CLONE_NEWNET = 0x40000000
METADATA_IP = "169.254.169.254"
RESOLVER = "127.0.0.53"  # nothing listens there: a lookup is refused on loopback at once
# Google Cloud's regions, for the regional names gcloud makes (REGION-run.googleapis.com)
REGIONS = (
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west10",
    "europe-west12",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
)
GOOGLE_NAMES = (
    "compute.googleapis.com",
    "secretmanager.googleapis.com",
    "run.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
    "cloudbuild.googleapis.com",
    "storage.googleapis.com",
    "artifactregistry.googleapis.com",
    "monitoring.googleapis.com",
    "logging.googleapis.com",
    "oauth2.googleapis.com",
    "metadata.google.internal",
)
SETUP = r"""
set -eu
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
mount --bind "$1" /etc/hosts
mount --bind "$2" /etc/resolv.conf
mount --bind "$3" /etc/ssl/certs/ca-certificates.crt
echo ready
exec sleep infinity
"""
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why a private network cannot be made here, or None."""
    if os.geteuid() != 0:
        return "it needs root (a network and mount namespace of its own)"
    missing = [c for c in ("unshare", "nsenter", "ip", "mount") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux, iproute2)"
    return None


def hosts_text() -> str:
    names = [*GOOGLE_NAMES]
    names += [f"{region}-run.googleapis.com" for region in REGIONS]
    names += [f"{region}-127.0.0.1" for region in REGIONS]  # an override's regional host
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"127.0.0.1 {name}" for name in names]
    lines.append(f"{METADATA_IP} metadata metadata.google.internal.")
    return "\n".join(lines) + "\n"


class PrivateNetwork:
    """The namespace, held by a process that sleeps in it (its pid: `holder`)."""

    def __init__(self, directory: Path, certificates: Certificates) -> None:
        self.directory = directory
        self.certificates = certificates
        self.holder: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        if self.holder is None:
            raise RuntimeError("the private network is not up")
        return self.holder.pid

    def start(self) -> PrivateNetwork:
        why = unavailable()
        if why is not None:
            raise RuntimeError(f"a private network cannot be made: {why}")
        self.directory.mkdir(parents=True, exist_ok=True)
        hosts, resolv = self.directory / "hosts", self.directory / "resolv.conf"
        hosts.write_text(hosts_text())
        resolv.write_text(f"nameserver {RESOLVER}\noptions timeout:1 attempts:1\n")
        argv = ["unshare", "--net", "--mount", "--propagation", "private", "--", "bash", "-c"]
        self.holder = subprocess.Popen(
            [*argv, SETUP, "bash", str(hosts), str(resolv), str(self.certificates.bundle)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        ready = self.holder.stdout.readline() if self.holder.stdout else ""
        if ready.strip() != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            self.stop()
            raise RuntimeError(f"the private network did not come up: {err.strip()}")
        return self

    def stop(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait(10)
        for pipe in (self.holder.stdout, self.holder.stderr) if self.holder else ():
            if pipe is not None:
                pipe.close()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This thread in the private network for a moment: sockets made meanwhile are there."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into the private network: {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover: cannot fail back
                    raise OSError(ctypes.get_errno(), "setns back to the machine's network")
        finally:
            os.close(own)
            os.close(target)

    def listen(self, host: str, port: int) -> socket.socket:
        """A TCP socket listening on host:port inside the private network."""
        with self.inside():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return sock

    def command(self, argv: list[str]) -> list[str]:
        """argv run inside the private network (its network and its mounts: hosts, CAs)."""
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", "--", *argv]

"""The QEMU guest's image: Debian 12 from Debian's packages, as close to Google's stock
`debian-12` image as this machine allows, built once and cached (docs/emulator.md, "Real VMs").

    python -m gcp_emulator image [--cache DIR]   build it (or find it built) and print its path

What it has, as a stock image has it: systemd, udev, Debian's cloud kernel, Debian's
`google-guest-agent` package (the guest agent, `google_metadata_script_runner` and the
google-startup-scripts unit), rsyslog with guest-configs' console rule (`daemon,kern.*
/dev/console`: the script runner's lines reach the serial console through it), curl, sudo,
openssl, python3, and `metadata.google.internal` in /etc/hosts. What it lacks, as a stock image
does: git and uv (startup.sh installs them); and, unlike Google's image, the Google Cloud CLI:
startup.sh needs none (it reads its secrets with curl and bash), and this image shows it. What
differs, and why:
- the guest agent is Debian's 20211116 package, not Google's current build (not in Debian);
- the kernel boots straight from the image's files (no boot loader), on the kernel command line
  `root=/dev/vda rw console=ttyS0 systemd.hostname=NAME`;
- the network is QEMU's user-mode network (169.254.169.0/24, the metadata server at
  169.254.169.254 relayed to the emulator), not a VPC;
- the startup script's Secret Manager endpoint is the emulator's (http://169.254.169.254/, what
  the relay passes on): CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER in the environment of
  google-startup-scripts.service (a drop-in; the script runner passes its environment on);
- where this machine reaches the package indexes through a proxy that signs with its own CA,
  the CAs in /usr/local/share/ca-certificates are copied in and trusted, and uv is told to use
  the system's trust store (/etc/uv/uv.toml).

The cache key is the package list and this file: a second build with the same inputs takes no
time. Building needs root (debootstrap, chroot) and debootstrap and
mkfs.ext4 on PATH; Image.missing() says what is not there.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "google-guest-agent",
    "rsyslog",
    "curl",
    "ca-certificates",
    "python3",
    "sudo",
    "openssl",
    "iproute2",
    "systemd-resolved",
)
DISK_SIZE = "6G"  # sparse: the image's files, and room for what the boots add (git, uv, .venv)
METADATA_IP = "169.254.169.254"
# guest-configs' src/etc/rsyslog.d/90-google.conf
CONSOLE_RULE = """\
# Google Compute Engine default console logging (guest-configs' 90-google.conf).
#
# daemon: logging from Google provided daemons.
# kern: logging information in case of an unexpected crash during boot.
#
daemon,kern.* /dev/console
"""
NETWORK = """\
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
"""
# the startup script's Secret Manager: the emulator, through the metadata server's relay
STARTUP_ENV = f"""\
[Service]
Environment=CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER=http://{METADATA_IP}/
"""


def cache_root() -> Path:
    given = os.environ.get("VM_IMAGE_CACHE")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vm-job-runner" / "images"


def host_cas() -> list[Path]:
    return sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))


def image_key() -> str:
    h = hashlib.sha256()
    h.update(json.dumps([SUITE, MIRROR, PACKAGES, DISK_SIZE]).encode())
    h.update(Path(__file__).read_bytes())
    for ca in host_cas():
        h.update(ca.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Image:
    dir: Path

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    def built(self) -> bool:
        return (self.dir / "image.json").is_file()

    @staticmethod
    def missing() -> str | None:
        """Why an image cannot be built here, or None."""
        if os.geteuid() != 0:
            return "building the VM image needs root (debootstrap, chroot)"
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                return f"{tool} is not installed (apt-get install debootstrap qemu-utils)"
        return None


def _run(argv: list[str], log: Path, **kw: object) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): " + " | ".join(tail))


def _say(message: str) -> None:
    print(f"vm_image: {message}", file=sys.stderr, flush=True)


def configure(root: Path, log: Path) -> None:
    """What a stock GCE Debian 12 image has beyond the packages (see the module's docstring)."""
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        f"{METADATA_IP} metadata.google.internal metadata\n"
    )
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,discard,errors=remount-ro 0 1\n")
    (root / "etc/machine-id").write_text("")  # each VM makes its own at its first boot
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/network/80-dhcp.network").write_text(NETWORK)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("/run/systemd/resolve/stub-resolv.conf")
    (root / "etc/rsyslog.d").mkdir(exist_ok=True)
    (root / "etc/rsyslog.d/90-google.conf").write_text(CONSOLE_RULE)
    cas = host_cas()
    for ca in cas:
        shutil.copy2(ca, root / "usr/local/share/ca-certificates" / ca.name)
    if cas:
        _run(["chroot", str(root), "update-ca-certificates"], log)
        (root / "etc/uv").mkdir(exist_ok=True)
        (root / "etc/uv/uv.toml").write_text(
            "# this machine's proxy signs with a CA of its own (vm_image.py)\nnative-tls = true\n"
        )
    dropin = root / "etc/systemd/system/google-startup-scripts.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "emulator.conf").write_text(STARTUP_ENV)
    units = ["systemd-networkd", "systemd-resolved", "google-guest-agent"]
    units += ["google-startup-scripts", "google-shutdown-scripts", "rsyslog"]
    _run(["chroot", str(root), "systemctl", "enable", *units], log)
    _run(["chroot", str(root), "apt-get", "clean"], log)
    for cache in ("var/lib/apt/lists",):
        for entry in (root / cache).glob("*_*"):
            entry.unlink()


def build(cache: Path | None = None) -> Image:
    """The image for today's inputs: found in the cache, or built there (a lock keeps two
    builds from racing)."""
    cache = cache or cache_root()
    image = Image(cache / image_key())
    if image.built():
        return image
    why = Image.missing()
    if why is not None:
        raise RuntimeError(why)
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.built():
            return image
        work = cache / f"{image.dir.name}.building"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        log = work / "build.log"
        root = work / "root"
        t0 = time.monotonic()
        _say(f"building {image.dir} (log: {log}): debootstrap {SUITE} from {MIRROR}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            log,
        )
        t1 = time.monotonic()
        configure(root, log)
        boot = root / "boot"
        kernel = max(boot.glob("vmlinuz-*"))
        shutil.copy2(kernel, work / "vmlinuz")
        shutil.copy2(boot / kernel.name.replace("vmlinuz", "initrd.img"), work / "initrd.img")
        _run(
            ["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(work / "disk.img"), DISK_SIZE],
            log,
        )
        shutil.rmtree(root)
        (work / "image.json").write_text(
            json.dumps(
                {
                    "suite": SUITE,
                    "packages": PACKAGES,
                    "kernel": kernel.name,
                    "debootstrap_seconds": round(t1 - t0, 1),
                    "total_seconds": round(time.monotonic() - t0, 1),
                },
                indent=1,
            )
        )
        shutil.rmtree(image.dir, ignore_errors=True)
        work.rename(image.dir)
        _say(f"built {image.dir} in {time.monotonic() - t0:.0f}s (debootstrap {t1 - t0:.0f}s)")
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gcp_emulator image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="the image cache (default: VM_IMAGE_CACHE or ~/.cache/vm-job-runner/images)",
    )
    args = parser.parse_args(argv)
    try:
        image = build(args.cache)
    except RuntimeError as exc:
        print(f"vm_image: {exc}", file=sys.stderr)
        return 1
    print(image.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

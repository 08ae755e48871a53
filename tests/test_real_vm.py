"""The real-VM tier: an instance whose guest is a Debian 12 VM under QEMU (gcp_emulator/
qemu_guest.py, its image from gcp_emulator/vm_image.py), with Debian's google-guest-agent and
its script runner, systemd and rsyslog. Slow (minutes under TCG): run with -m real_vm; .ci/run
runs it after the other tiers. Skipped, with the reason, where QEMU, debootstrap or root are
missing."""

from __future__ import annotations

import time

import pytest

from gcp_emulator.qemu_guest import qemu_missing
from gcp_emulator.vm_image import build
from tests.conftest import wait_until
from tests.harness import needs_gcloud

pytestmark = [
    pytest.mark.e2e,  # never in the fast tier (-m "not e2e")
    pytest.mark.real_vm,
    pytest.mark.timeout(900),
    pytest.mark.skipif(qemu_missing() is not None, reason=f"no real VMs here: {qemu_missing()}"),
]

ZONE = "us-central1-a"
SCRIPT = r"""#!/bin/bash
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) real-vm: to stdout"
echo "real-vm: to stderr" >&2
pin=$(gcloud secrets versions access latest --secret=vm-secret) || pin="gcloud failed: $?"
echo "real-vm: the secret is $pin"
curl -sf -X PUT --data "$pin" -H 'Metadata-Flavor: Google' \
  http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/vm-job-agent/probe
echo "real-vm: powering off"
poweroff
"""


@pytest.fixture(scope="module")
def image():
    return build()


@needs_gcloud
def test_a_real_vm_runs_its_startup_script_with_googles_runner_and_powers_itself_off(
    emulator, image
):
    """Google's script runner (Debian's 20211116) fetches the startup-script from the metadata
    server at 169.254.169.254 and runs it; its lines reach the serial console through rsyslog;
    gcloud inside finds its credentials on the metadata server and reads a secret from the
    emulator; a guest attribute PUT lands; `poweroff` inside ends the VM: TERMINATED."""
    config = f"""project = "real-vm-project"
zone = "{ZONE}"
guest = "qemu"
[[instances]]
name = "vm-real"
network_ip = "127.0.0.9"
metadata = {{ enable-guest-attributes = "TRUE", startup-script = '''{SCRIPT}''' }}
[[secrets]]
name = "vm-secret"
value = "s3cret-from-secret-manager"
"""
    emu = emulator(config)
    started = time.monotonic()
    emu.gcloud("compute", "instances", "start", "vm-real", f"--zone={ZONE}")

    def attributes() -> dict[str, str]:
        return emu.instance("vm-real")["guest_attributes"]

    wait_until(lambda: "vm-job-agent/probe" in attributes(), 600, "the script's guest attribute")
    assert attributes()["vm-job-agent/probe"] == "s3cret-from-secret-manager"
    assert "guest-agent/sshable" in attributes(), "Google's guest agent ran and wrote its own"
    emu.wait_status("vm-real", "TERMINATED", timeout=300)
    took = time.monotonic() - started
    serial = (emu.state_dir / "instances" / ZONE / "vm-real" / "serial-port-1.log").read_text()
    for line in ("real-vm: to stdout", "real-vm: to stderr", "real-vm: powering off"):
        assert "google_metadata_script_runner[" in serial and line in serial, line
    assert "Linux version" in serial, "the kernel's console is the serial port"
    events = [e.get("event") for e in emu.journal() if e["kind"] == "event"]
    assert "guest_poweroff" in events, "the VM ended by its own poweroff"
    print(f"real VM: start to TERMINATED by its own poweroff in {took:.0f}s")

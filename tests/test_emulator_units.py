"""Emulator details that need no server: checksums, fingerprints, a real VM's stop grace."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path

from gcp_emulator.compute.models import Compute, Instance
from gcp_emulator.config import default_config
from gcp_emulator.core.crc32c import crc32c
from gcp_emulator.core.state import Cloud
from gcp_emulator.core.util import same_fingerprint
from gcp_emulator.guests import qemu as qemu_guest
from gcp_emulator.guests.qemu import QemuGuest


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283, "the standard CRC32C check value"
    assert crc32c(b"") == 0


def test_a_fingerprint_sent_back_url_safe_still_matches():
    # gcloud decodes the bytes field and encodes it again URL-safe: '+' '/' come back '-' '_'.
    assert same_fingerprint("ab-_AAAAAAA=", "ab+/AAAAAAA=")
    assert same_fingerprint("ab+/AAAAAAA=", "ab+/AAAAAAA=")


def test_a_different_or_malformed_fingerprint_does_not_match():
    assert not same_fingerprint("AAAAAAAAAAA=", "AQAAAAAAAAA=")
    assert not same_fingerprint("not base64!", "AQAAAAAAAAA=")
    assert not same_fingerprint(None, "AQAAAAAAAAA=")


class PowerButtonRecorder(QemuGuest):
    """A real VM's stand-in: records the grace each shutdown gives, powers off at once."""

    def __init__(self) -> None:  # no QEMU behind it
        self.proc = None
        self.graces: list[float] = []

    async def shutdown(self, grace: float = qemu_guest.GRACE) -> None:
        self.graces.append(grace)


def shut_down_real_vm(tmp_path: Path, how: Callable[[Compute, Instance], object]) -> list[float]:
    """A RUNNING VM with a real-VM guest, stopped through `how`: the graces its guest got."""
    compute = Cloud(default_config(), tmp_path, "http://127.0.0.1:9", tmp_path).compute
    inst = compute.instances[("us-central1-a", "vm-1")]
    guest = PowerButtonRecorder()

    async def scenario() -> None:
        inst.status, inst.guest = "RUNNING", guest
        how(compute, inst)
        assert inst.task is not None
        await inst.task

    asyncio.run(scenario())
    assert inst.status == "TERMINATED"
    return guest.graces


def test_a_preempted_real_vm_is_hard_stopped_after_30_s_a_stopped_one_after_90(tmp_path):
    # Compute Engine: ACPI soft-off, then power off after 30 s for a preempted Spot VM and
    # after 90 s for a stop
    assert shut_down_real_vm(tmp_path / "p", Compute.preempt) == [30.0]
    assert shut_down_real_vm(tmp_path / "s", Compute.stop) == [90.0]


def test_the_metadata_relay_qemu_runs_is_a_module_that_exists():
    # QEMU runs it by name for each connection of the VM to its metadata server: a module moved
    # without this name would leave every real VM without its metadata
    assert importlib.util.find_spec(qemu_guest.RELAY_MODULE) is not None


def test_secret_manager_answers_at_the_metadata_address_where_the_real_vms_gcloud_reaches_it():
    # the QEMU guest's gcloud is pointed at http://169.254.169.254/ for Secret Manager, and the
    # metadata relay passes the VM's Host header on: the request is Secret Manager's, not a 404
    from gcp_emulator.core.app import EmulatorApp  # noqa: F401  (registers every route)
    from gcp_emulator.core.routing import match

    path = "/v1/projects/p/secrets/app-env/versions/latest:access"
    for host in ("169.254.169.254", "metadata.google.internal", "127.0.0.1:8080"):
        found = match("GET", host, path)
        assert found is not None and found[0].api == "secretmanager.versions.access", host
    found = match("GET", "169.254.169.254", "/vm/z/i/computeMetadata/v1/instance/id")
    assert found is not None and found[0].service == "metadata"

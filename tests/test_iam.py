"""The orchestrator under the IAM role docs/deploy.md documents, read from the page itself, on an
emulator that enforces it as Compute Engine does (403 "Required 'PERMISSION' permission for
'RESOURCE'"): the whole flow works under exactly that role, and a missing permission is said."""

from __future__ import annotations

import json

import pytest

from tests import chain
from tests.conftest import REPO
from tests.flow import PROJECT, ZONE
from tests.harness import needs_gcloud

pytestmark = [pytest.mark.e2e, needs_gcloud]


def documented_role() -> set[str]:
    """The --permissions of `gcloud iam roles create` in docs/deploy.md (what deploy.sh grants)."""
    return set(chain.documented_role())


def settings(permissions: set[str]) -> str:
    return f"permissions = {json.dumps(sorted(permissions))}"


def test_the_documented_role_is_read_whole():
    role = documented_role()
    assert {"compute.instances.start", "compute.subnetworks.useExternalIp"} <= role, role
    assert "compute.instances.getSerialPortOutput" in role, "the console relay needs it"
    assert (REPO / "docs/ko/deploy.md").read_text().count(
        "compute.instances.getSerialPortOutput"
    ) == 1, "the Korean page documents the same role"


def test_the_whole_flow_runs_under_exactly_the_documented_role(make_flow):
    flow = make_flow(settings=settings(documented_role()))
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    refused = [c for c in flow.emu.calls() if c["status"] == 403]
    assert refused == [], f"calls the documented role does not allow: {refused}"
    assert "[vm] " in r.stderr, "the boot's console lines are relayed"
    assert "serial console was refused" not in r.stderr
    flow.assert_cleaned_up()


def test_without_the_console_permission_the_relay_says_it_is_off_once(make_flow):
    flow = make_flow(
        settings=settings(documented_role() - {"compute.instances.getSerialPortOutput"})
    )
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("the VM's boot will not be in this log") == 1, r.stderr
    assert "Grant the job's service account compute.instances.getSerialPortOutput" in r.stderr
    reads = flow.emu.calls("compute.instances.getSerialPortOutput")
    assert len(reads) == 1, f"the console was read again after a 403: {len(reads)} reads"
    flow.assert_cleaned_up()


def test_a_missing_permission_is_computes_403_naming_it(make_flow):
    flow = make_flow(settings=settings(documented_role() - {"compute.instances.start"}))
    r = flow.entrypoint()
    assert r.returncode == 5, r.stderr
    assert (
        f"Required 'compute.instances.start' permission for "
        f"'projects/{PROJECT}/zones/{ZONE}/instances/vm-0'" in r.stderr
    ), r.stderr
    inst = flow.emu.instance("vm-0")
    assert inst["status"] == "TERMINATED" and inst["access_configs"] == [], inst
    assert "vm-job-owner" not in inst["labels"], "the claim was given back"

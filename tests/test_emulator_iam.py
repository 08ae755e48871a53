"""The emulator's IAM decides: a service account's call needs a role bound to it (on the project
or on the resource) that holds the call's permission, and a refusal names the permission as
Google's does; an API that is not enabled answers as Google's front end does. With the real
gcloud acting as the account (a token of its, from the emulator's hook)."""

from __future__ import annotations

import base64

import pytest

from gcp_emulator.core.crc32c import crc32c
from tests.harness import EmulatorProcess, needs_gcloud, needs_private_network

pytestmark = [pytest.mark.e2e, needs_gcloud]

PROJECT = "demo-project"
ZONE = "us-central1-a"


def start(tmp_path, settings: str = "", private: bool = False) -> EmulatorProcess:
    config = tmp_path / "emulator.toml"
    config.write_text(
        f'{settings}\n[[instances]]\nname = "vm-1"\nzone = "{ZONE}"\n'
        '[[secrets]]\nname = "mine"\nvalue = "my value"\n'
        '[[secrets]]\nname = "theirs"\nvalue = "their value"\n'
    )
    return EmulatorProcess(config, tmp_path / "emulator", private=private)


@pytest.fixture
def emu(tmp_path):
    started = start(tmp_path)
    yield started
    started.stop()


def ok(emu: EmulatorProcess, *args: str, **env: str) -> str:
    r = emu.gcloud(*args, **env)
    assert r.returncode == 0, f"gcloud {' '.join(args)}: {r.stderr}"
    return r.stdout


def account(emu: EmulatorProcess, name: str) -> tuple[str, dict[str, str]]:
    """A new service account's member, and the environment in which gcloud acts as it."""
    ok(emu, "iam", "service-accounts", "create", name)
    email = f"{name}@{PROJECT}.iam.gserviceaccount.com"
    r = emu.http.post("/_emulator/iam/token", json={"account": email})
    assert r.status_code == 200, r.text
    return f"serviceAccount:{email}", {"CLOUDSDK_AUTH_ACCESS_TOKEN": r.json()["access_token"]}


def test_an_accounts_compute_call_needs_a_role_holding_its_permission(emu):
    member, as_it = account(emu, "reader")
    describe = ("compute", "instances", "describe", "vm-1", f"--zone={ZONE}")
    refused = emu.gcloud(*describe, **as_it)
    assert refused.returncode != 0
    assert (
        f"Required 'compute.instances.get' permission for "
        f"'projects/{PROJECT}/zones/{ZONE}/instances/vm-1'" in refused.stderr
    ), refused.stderr
    ok(emu, "projects", "add-iam-policy-binding", PROJECT, f"--member={member}",
       "--role=roles/compute.viewer")  # fmt: skip
    assert "name: vm-1" in ok(emu, *describe, **as_it)
    start = emu.gcloud("compute", "instances", "start", "vm-1", f"--zone={ZONE}", **as_it)
    assert start.returncode != 0 and "compute.instances.start" in start.stderr, start.stderr
    assert emu.instance("vm-1")["status"] == "TERMINATED"


def test_a_custom_role_grants_what_it_lists_and_an_update_what_it_adds(emu):
    member, as_it = account(emu, "starter")
    ok(emu, "iam", "roles", "create", "vmStarter", f"--project={PROJECT}",
       "--permissions=compute.instances.get")  # fmt: skip
    ok(emu, "projects", "add-iam-policy-binding", PROJECT, f"--member={member}",
       f"--role=projects/{PROJECT}/roles/vmStarter")  # fmt: skip
    start = ("compute", "instances", "start", "vm-1", f"--zone={ZONE}")
    refused = emu.gcloud(*start, **as_it)
    assert refused.returncode != 0
    assert "Required 'compute.instances.start' permission" in refused.stderr, refused.stderr
    ok(emu, "iam", "roles", "update", "vmStarter", f"--project={PROJECT}",
       "--add-permissions=compute.instances.start,compute.zoneOperations.get")  # fmt: skip
    ok(emu, *start, **as_it)
    assert emu.instance("vm-1")["status"] in ("STAGING", "RUNNING")


def test_a_secret_is_read_only_where_the_account_has_access(emu):
    member, as_it = account(emu, "vm-agent")
    read = ("secrets", "versions", "access", "latest")
    refused = emu.gcloud(*read, "--secret=mine", **as_it)
    assert refused.returncode != 0
    assert "Permission 'secretmanager.versions.access' denied" in refused.stderr, refused.stderr
    ok(emu, "secrets", "add-iam-policy-binding", "mine", f"--member={member}",
       "--role=roles/secretmanager.secretAccessor")  # fmt: skip
    assert ok(emu, *read, "--secret=mine", **as_it) == "my value"
    other = emu.gcloud(*read, "--secret=theirs", **as_it)
    assert other.returncode != 0, "a binding on one secret is not one on the project"


def test_a_vms_metadata_token_reads_a_secret_over_rest_only_where_its_account_may(emu):
    """What startup.sh does without gcloud: the VM's token from its metadata server (Google's
    JSON: access_token, expires_in, token_type) on Secret Manager's REST API, checked against
    the VM's account's roles; the payload base64 with its CRC32C."""
    member, _ = account(emu, "vm-agent")
    ok(emu, "compute", "instances", "set-service-account", "vm-1", f"--zone={ZONE}",
       f"--service-account={member.split(':', 1)[1]}", "--scopes=cloud-platform")  # fmt: skip
    answer = emu.http.get(
        f"/vm/{ZONE}/vm-1/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"},
    )
    assert answer.status_code == 200 and answer.headers["metadata-flavor"] == "Google"
    token = answer.json()
    assert set(token) == {"access_token", "expires_in", "token_type"}
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0
    read = f"/v1/projects/{PROJECT}/secrets/mine/versions/latest:access"
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    refused = emu.http.get(read, headers=bearer)
    assert refused.status_code == 403
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "secretmanager.versions.access" in refused.json()["error"]["message"]
    ok(emu, "secrets", "add-iam-policy-binding", "mine", f"--member={member}",
       "--role=roles/secretmanager.secretAccessor")  # fmt: skip
    payload = emu.http.get(read, headers=bearer).json()["payload"]
    assert base64.b64decode(payload["data"]) == b"my value"
    assert int(payload["dataCrc32c"]) == crc32c(b"my value")


def test_an_api_that_is_not_enabled_answers_as_google_does_until_it_is(tmp_path):
    emu = start(tmp_path, 'services = ["compute.googleapis.com"]')
    try:
        r = emu.gcloud("secrets", "list")
        assert r.returncode != 0
        assert (
            "Secret Manager API has not been used in project 123456789012 before or it is "
            "disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
            "secretmanager.googleapis.com/overview?project=123456789012 then retry."
        ) in r.stderr, r.stderr
        ok(emu, "services", "enable", "secretmanager.googleapis.com")
        assert "mine" in ok(emu, "secrets", "list", "--format=value(name)")
        enabled = ok(emu, "services", "list", "--enabled", "--format=value(config.name)")
        assert {"compute.googleapis.com", "secretmanager.googleapis.com"} <= set(enabled.split())
    finally:
        emu.stop()


def test_a_deleted_accounts_token_is_refused_not_taken_for_the_owners(emu):
    member, as_it = account(emu, "shortlived")
    ok(emu, "projects", "add-iam-policy-binding", PROJECT, f"--member={member}",
       "--role=roles/compute.viewer")  # fmt: skip
    describe = ("compute", "instances", "describe", "vm-1", f"--zone={ZONE}")
    ok(emu, *describe, **as_it)
    ok(emu, "iam", "service-accounts", "delete", member.split(":", 1)[1], "--quiet")
    refused = emu.gcloud(*describe, **as_it)
    assert refused.returncode != 0
    assert "invalid authentication credentials" in refused.stderr, refused.stderr


@pytest.fixture
def private_emu(tmp_path):
    """gcloud scheduler runs only in the emulator's private network (tests/harness.py)."""
    started = start(tmp_path, private=True)
    yield started
    started.stop()


@needs_private_network
def test_a_scheduler_job_that_sends_an_accounts_token_needs_act_as_on_it(private_emu):
    emu = private_emu
    deployer, as_deployer = account(emu, "deployer")
    ok(emu, "projects", "add-iam-policy-binding", PROJECT, f"--member={deployer}",
       "--role=roles/cloudscheduler.admin")  # fmt: skip
    invoker, _ = account(emu, "invoker")
    create = (
        "scheduler", "jobs", "create", "http", "slots", "--location=us-central1",
        "--schedule=0 9 * * *", "--uri=https://run.googleapis.com/v2/projects/p/locations/"
        "us-central1/jobs/j:run", f"--oauth-service-account-email={invoker.split(':', 1)[1]}",
    )  # fmt: skip
    refused = emu.gcloud(*create, **as_deployer)
    assert refused.returncode != 0
    assert "Permission 'iam.serviceAccounts.actAs' denied" in refused.stderr, refused.stderr
    ok(emu, "iam", "service-accounts", "add-iam-policy-binding", invoker.split(":", 1)[1],
       f"--member={deployer}", "--role=roles/iam.serviceAccountUser")  # fmt: skip
    ok(emu, *create, **as_deployer)

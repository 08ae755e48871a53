"""What a deployment creates in Compute Engine, made, changed and removed with the real gcloud
against the emulator: instances (create, delete, set-service-account, add-tags/remove-tags),
static addresses, firewall rules, and the default network and its subnets."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness import EmulatorProcess, needs_gcloud

pytestmark = [pytest.mark.e2e, needs_gcloud]

PROJECT = "demo-project"  # the emulator's default configuration: vm-1 and static-ip-1 there
ZONE = "us-central1-a"
REGION = "us-central1"
Z = f"--zone={ZONE}"
SA = f"vm-agent@{PROJECT}.iam.gserviceaccount.com"
DEFAULT_SA = "123456789012-compute@developer.gserviceaccount.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@pytest.fixture
def emu(tmp_path):
    started = EmulatorProcess(None, tmp_path / "emulator")
    yield started
    started.stop()


@pytest.fixture
def startup(tmp_path):
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/bash\necho booted\n")
    return script


def ok(emu: EmulatorProcess, *args: str, **env: str) -> str:
    r = emu.gcloud(*args, **env)
    assert r.returncode == 0, f"gcloud {' '.join(args)}: {r.stderr}"
    return r.stdout


def fails(emu: EmulatorProcess, *args: str, **env: str) -> str:
    r = emu.gcloud(*args, **env)
    assert r.returncode != 0, f"gcloud {' '.join(args)} succeeded: {r.stdout}"
    return r.stderr


def describe(emu: EmulatorProcess, name: str) -> dict:
    return json.loads(ok(emu, "compute", "instances", "describe", name, Z, "--format=json"))


def metadata(emu: EmulatorProcess, name: str, path: str) -> tuple[int, str]:
    """What the instance's metadata server answers (its guest's view)."""
    r = emu.http.get(
        f"/vm/{ZONE}/{name}/computeMetadata/v1/{path}", headers={"Metadata-Flavor": "Google"}
    )
    return r.status_code, r.text


def statuses(emu: EmulatorProcess, name: str) -> list[str]:
    return [
        e["status"]
        for e in emu.journal()
        if e.get("event") == "status" and e.get("instance") == f"{ZONE}/{name}"
    ]


def deployment_create(emu: EmulatorProcess, name: str, startup, *extra: str) -> str:
    return ok(
        emu, "compute", "instances", "create", name, Z, "--machine-type=e2-small",
        "--image-family=debian-12", "--image-project=debian-cloud", "--boot-disk-size=10GB",
        "--boot-disk-type=pd-balanced", "--no-address", f"--service-account={SA}",
        "--scopes=cloud-platform", "--tags=vm-job-agent",
        "--metadata=enable-guest-attributes=TRUE", f"--metadata-from-file=startup-script={startup}",
        "--labels=k=v", "--max-run-duration=4140s", "--instance-termination-action=STOP", *extra,
    )  # fmt: skip


# -- instances.insert ----------------------------------------------------------------------------


def test_create_with_the_deployments_flags_makes_a_running_vm_with_those_properties(emu, startup):
    ok(emu, "iam", "service-accounts", "create", "vm-agent")
    table = deployment_create(emu, "vm-job", startup)
    assert "vm-job" in table and "RUNNING" in table and "e2-small" in table, table
    vm = describe(emu, "vm-job")
    assert vm["status"] == "RUNNING"
    assert vm["machineType"].endswith(f"/projects/{PROJECT}/zones/{ZONE}/machineTypes/e2-small")
    [disk] = vm["disks"]
    assert disk["boot"] is True and disk["autoDelete"] is True
    assert disk["source"].endswith(f"/projects/{PROJECT}/zones/{ZONE}/disks/vm-job")
    assert disk["diskSizeGb"] == "10" and disk["deviceName"] == "persistent-disk-0"
    [nic] = vm["networkInterfaces"]
    assert nic["network"].endswith(f"/projects/{PROJECT}/global/networks/default")
    assert nic["subnetwork"].endswith(f"/projects/{PROJECT}/regions/{REGION}/subnetworks/default")
    assert "accessConfigs" not in nic, "--no-address: no external IP"
    assert nic["networkIP"].startswith("127.") and nic["networkIP"] != "127.0.100.2", "not vm-1's"
    assert vm["serviceAccounts"] == [{"email": SA, "scopes": [CLOUD_PLATFORM]}]
    assert vm["tags"]["items"] == ["vm-job-agent"] and vm["tags"]["fingerprint"]
    items = {i["key"]: i["value"] for i in vm["metadata"]["items"]}
    assert items == {"enable-guest-attributes": "TRUE", "startup-script": startup.read_text()}
    assert vm["labels"] == {"k": "v"}
    assert vm["scheduling"]["maxRunDuration"] == {"seconds": "4140"}
    assert vm["scheduling"]["instanceTerminationAction"] == "STOP"
    assert statuses(emu, "vm-job") == ["PROVISIONING", "STAGING", "RUNNING"]
    # it boots as a started VM does: the startup script runs, and the guest is the account
    deadline = time.monotonic() + 5
    while "booted" not in ok(emu, "compute", "instances", "get-serial-port-output", "vm-job", Z):
        assert time.monotonic() < deadline, "the startup script did not run"
        time.sleep(0.2)
    assert metadata(emu, "vm-job", "instance/service-accounts/default/email") == (200, SA)
    assert metadata(emu, "vm-job", "instance/tags?alt=json")[1] == '["vm-job-agent"]'


def test_create_with_gclouds_defaults_runs_as_the_default_account_with_an_external_ip(emu):
    table = ok(emu, "compute", "instances", "create", "vm-plain", Z)
    assert "n1-standard-1" in table and "RUNNING" in table, table
    vm = describe(emu, "vm-plain")
    [account] = vm["serviceAccounts"]
    assert account["email"] == DEFAULT_SA, "'default' is the project's compute account"
    assert "https://www.googleapis.com/auth/devstorage.read_only" in account["scopes"]
    nat_ip = vm["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
    assert nat_ip.startswith("127."), "an ephemeral external IP stands in on loopback"
    assert vm["disks"][0]["licenses"][0].endswith(
        "/debian-cloud/global/licenses/debian-12-bookworm"
    )
    names = ok(emu, "compute", "instances", "list", "--format=value(name)").split()
    assert names == ["vm-1", "vm-plain"]


def test_create_with_no_service_account_and_no_scopes_has_no_account(emu):
    ok(emu, "compute", "instances", "create", "vm-bare", Z, "--no-service-account",
       "--no-scopes", "--no-address")  # fmt: skip
    assert "serviceAccounts" not in describe(emu, "vm-bare")
    assert metadata(emu, "vm-bare", "instance/service-accounts/default/email")[0] == 404


def test_creating_a_name_that_exists_is_a_conflict_in_computes_words(emu):
    err = fails(emu, "compute", "instances", "create", "vm-1", Z, "--no-address")
    assert "Could not fetch resource:" in err
    assert f"The resource 'projects/{PROJECT}/zones/{ZONE}/instances/vm-1' already exists" in err
    assert emu.instance("vm-1")["status"] == "TERMINATED", "the existing VM is untouched"


def test_an_unknown_image_family_or_machine_type_is_refused(emu):
    err = fails(emu, "compute", "instances", "create", "vm-x", Z, "--image-family=debian-99",
                "--image-project=debian-cloud")  # fmt: skip
    assert "projects/debian-cloud/zones/-/imageFamilyViews/debian-99' was not found" in err, err
    err = fails(emu, "compute", "instances", "create", "vm-x", Z, "--machine-type=e2-huge")
    assert "Machine type with name 'e2-huge' does not exist in zone" in err, err
    assert "vm-x" not in [i["name"] for i in emu.state()["instances"]]


def test_creating_with_another_account_needs_act_as_on_it(emu):
    ok(emu, "iam", "service-accounts", "create", "vm-agent")
    ok(emu, "iam", "service-accounts", "create", "deployer")
    token = emu.http.post(
        "/_emulator/iam/token", json={"account": f"deployer@{PROJECT}.iam.gserviceaccount.com"}
    ).json()["access_token"]
    as_deployer = {"CLOUDSDK_AUTH_ACCESS_TOKEN": token}
    create = ("compute", "instances", "create", "vm-sa", Z, "--no-address",
              f"--service-account={SA}", "--scopes=cloud-platform")  # fmt: skip
    err = fails(emu, *create, **as_deployer)
    assert "Required 'compute.instances.create' permission" in err, err
    ok(emu, "projects", "add-iam-policy-binding", PROJECT,
       f"--member=serviceAccount:deployer@{PROJECT}.iam.gserviceaccount.com",
       "--role=roles/compute.instanceAdmin.v1")  # fmt: skip
    err = fails(emu, *create, **as_deployer)
    assert f"The user does not have access to service account '{SA}'" in err, err
    ok(emu, "iam", "service-accounts", "add-iam-policy-binding", SA,
       f"--member=serviceAccount:deployer@{PROJECT}.iam.gserviceaccount.com",
       "--role=roles/iam.serviceAccountUser")  # fmt: skip
    assert "RUNNING" in ok(emu, *create, **as_deployer)


# -- instances.delete ----------------------------------------------------------------------------


def test_delete_stops_the_guest_as_stop_does_then_the_instance_is_gone(emu, startup):
    ok(emu, "compute", "instances", "create", "vm-gone", Z, "--no-address",
       f"--metadata-from-file=startup-script={startup}")  # fmt: skip
    r = emu.gcloud("compute", "instances", "delete", "vm-gone", Z, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "Deleted [" in r.stderr
    assert statuses(emu, "vm-gone")[-2:] == ["STOPPING", "TERMINATED"]
    events = [e["event"] for e in emu.journal() if e.get("instance") == f"{ZONE}/vm-gone"]
    assert events.index("guest_stop") < events.index("deleted")
    err = fails(emu, "compute", "instances", "describe", "vm-gone", Z)
    assert f"projects/{PROJECT}/zones/{ZONE}/instances/vm-gone' was not found" in err
    # the name is free again: a new instance, with a new id
    ok(emu, "compute", "instances", "create", "vm-gone", Z, "--no-address")
    assert describe(emu, "vm-gone")["status"] == "RUNNING"


def test_an_in_use_address_is_not_deleted_and_is_released_with_its_instance(emu):
    ok(emu, "compute", "addresses", "create", "ip-web", f"--region={REGION}")
    ok(emu, "compute", "instances", "create", "vm-web", Z, "--address=ip-web")
    status = ("compute", "addresses", "describe", "ip-web", f"--region={REGION}",
              "--format=value(status)")  # fmt: skip
    assert ok(emu, *status) == "IN_USE\n"
    delete = ("compute", "addresses", "delete", "ip-web", f"--region={REGION}", "--quiet")
    err = fails(emu, *delete)
    assert (
        f"The address resource 'projects/{PROJECT}/regions/{REGION}/addresses/ip-web' is "
        f"already being used by 'projects/{PROJECT}/zones/{ZONE}/instances/vm-web'"
    ) in err, err
    ok(emu, "compute", "instances", "delete", "vm-web", Z, "--quiet")
    assert ok(emu, *status) == "RESERVED\n"
    ok(emu, *delete)
    assert "ip-web" not in ok(emu, "compute", "addresses", "list", "--format=value(name)")


def test_a_create_the_zone_has_no_capacity_for_makes_no_vm_and_holds_no_address(emu):
    ok(emu, "compute", "addresses", "create", "ip-web", f"--region={REGION}")
    emu.stockout(ZONE)
    err = fails(emu, "compute", "instances", "create", "vm-web", Z, "--address=ip-web")
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in err, err
    assert "vm-web" not in ok(emu, "compute", "instances", "list", "--format=value(name)")
    status = ok(emu, "compute", "addresses", "describe", "ip-web", f"--region={REGION}",
                "--format=value(status)")  # fmt: skip
    assert status == "RESERVED\n", "the refused VM's address is free again"


# -- addresses -----------------------------------------------------------------------------------


def test_addresses_create_reserves_a_fresh_loopback_address(emu):
    ok(emu, "compute", "addresses", "create", "ip-a", f"--region={REGION}")
    ok(emu, "compute", "addresses", "create", "ip-b", f"--region={REGION}")
    listed = ok(emu, "compute", "addresses", "list", "--format=value(name,address,status)")
    rows = {line.split()[0]: line.split()[1:] for line in listed.splitlines()}
    assert set(rows) == {"ip-a", "ip-b", "static-ip-1"}
    addresses = {row[0] for row in rows.values()}
    assert len(addresses) == 3 and all(a.startswith("127.") for a in addresses)
    assert rows["ip-a"][1] == "RESERVED"
    err = fails(emu, "compute", "addresses", "create", "ip-a", f"--region={REGION}")
    assert f"projects/{PROJECT}/regions/{REGION}/addresses/ip-a' already exists" in err


# -- set-service-account, add-tags, remove-tags --------------------------------------------------


def test_set_service_account_is_refused_while_running_and_applies_once_stopped(emu):
    ok(emu, "iam", "service-accounts", "create", "vm-agent")
    ok(emu, "compute", "instances", "start", "vm-1", Z)
    set_it = ("compute", "instances", "set-service-account", "vm-1", Z,
              f"--service-account={SA}", "--scopes=cloud-platform")  # fmt: skip
    err = fails(emu, *set_it)
    assert "Invalid resource usage: 'Instance should be in the STOPPED state.'" in err, err
    ok(emu, "compute", "instances", "stop", "vm-1", Z)
    ok(emu, *set_it)
    assert describe(emu, "vm-1")["serviceAccounts"] == [{"email": SA, "scopes": [CLOUD_PLATFORM]}]
    assert metadata(emu, "vm-1", "instance/service-accounts/default/email") == (200, SA)
    ok(emu, "compute", "instances", "set-service-account", "vm-1", Z, "--no-service-account",
       "--no-scopes")  # fmt: skip
    assert "serviceAccounts" not in describe(emu, "vm-1")


def test_add_and_remove_tags_replace_the_list_under_its_fingerprint(emu):
    before = describe(emu, "vm-1")["tags"]["fingerprint"]
    ok(emu, "compute", "instances", "add-tags", "vm-1", Z, "--tags=vm-job-agent,other")
    tags = describe(emu, "vm-1")["tags"]
    assert tags["items"] == ["other", "vm-job-agent"] and tags["fingerprint"] != before
    ok(emu, "compute", "instances", "remove-tags", "vm-1", Z, "--tags=other")
    assert describe(emu, "vm-1")["tags"]["items"] == ["vm-job-agent"]
    stale = emu.http.post(
        f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/vm-1/setTags",
        json={"items": ["x"], "fingerprint": before},
        headers={"Authorization": "Bearer any"},
    )
    assert stale.status_code == 412, stale.text
    assert describe(emu, "vm-1")["tags"]["items"] == ["vm-job-agent"]


# -- firewall rules, networks --------------------------------------------------------------------


def test_firewall_rules_are_created_described_listed_updated_and_deleted(emu):
    create = ("compute", "firewall-rules", "create", "allow-vm-job-agent", "--network=default",
              "--direction=INGRESS", "--action=ALLOW", "--rules=tcp:8000",
              "--target-tags=vm-job-agent", "--source-ranges=0.0.0.0/0")  # fmt: skip
    r = emu.gcloud(*create)
    assert r.returncode == 0, r.stderr
    assert "allow-vm-job-agent  default  INGRESS    1000      tcp:8000" in r.stdout, r.stdout
    get = ("compute", "firewall-rules", "describe", "allow-vm-job-agent", "--format=json")
    rule = json.loads(ok(emu, *get))
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["8000"]}]
    assert rule["sourceRanges"] == ["0.0.0.0/0"] and rule["targetTags"] == ["vm-job-agent"]
    assert rule["network"].endswith(f"/projects/{PROJECT}/global/networks/default")
    assert (rule["direction"], rule["priority"], rule["disabled"]) == ("INGRESS", 1000, False)
    assert "already exists" in fails(emu, *create)
    ok(emu, "compute", "firewall-rules", "update", "allow-vm-job-agent",
       "--source-ranges=10.128.0.0/20")  # fmt: skip
    assert json.loads(ok(emu, *get))["sourceRanges"] == ["10.128.0.0/20"]
    listed = ok(emu, "compute", "firewall-rules", "list", "--format=value(name)")
    assert listed.split() == ["allow-vm-job-agent"]
    ok(emu, "compute", "firewall-rules", "delete", "allow-vm-job-agent", "--quiet")
    assert "was not found" in fails(emu, *get)
    waits = [c for c in emu.calls("compute.globalOperations.wait") if c["status"] == 200]
    assert len(waits) >= 3, "gcloud followed create, update and delete to DONE"


def test_the_default_network_and_its_subnets_answer(emu):
    network = json.loads(ok(emu, "compute", "networks", "describe", "default", "--format=json"))
    assert network["autoCreateSubnetworks"] is True
    assert network["x_gcloud_subnet_mode"] == "AUTO"
    assert any(s.endswith(f"/regions/{REGION}/subnetworks/default") for s in network["subnetworks"])
    cidr = ok(emu, "compute", "networks", "subnets", "describe", "default",
              f"--region={REGION}", "--format=value(ipCidrRange)")  # fmt: skip
    assert cidr == "10.128.0.0/20\n"
    err = fails(emu, "compute", "networks", "describe", "other")
    assert f"projects/{PROJECT}/global/networks/other' was not found" in err


def test_a_run_limit_with_the_delete_action_deletes_the_instance(emu):
    ok(emu, "compute", "instances", "create", "vm-short", Z, "--no-address",
       "--max-run-duration=1s", "--instance-termination-action=DELETE")  # fmt: skip
    deadline = time.monotonic() + 10
    while "vm-short" in [i["name"] for i in emu.state()["instances"]]:
        assert time.monotonic() < deadline, "vm-short outlived its run limit"
        time.sleep(0.1)
    assert statuses(emu, "vm-short")[-2:] == ["STOPPING", "TERMINATED"]

"""Every gcloud command the scripts use, run through the real gcloud CLI against the emulator."""

from __future__ import annotations

import base64
import http.client

import httpx
import pytest

from gcp_emulator.core.crc32c import crc32c
from tests.harness import needs_gcloud

pytestmark = [pytest.mark.e2e, needs_gcloud]

ZONE = "asia-northeast3-c"
REGION = "asia-northeast3"
CONFIG = f"""
project = "test-project"
region = "{REGION}"
zone = "{ZONE}"

[[instances]]
name = "vm-a"

[[addresses]]
name = "ip-a"
address = "127.0.0.21"

[[secrets]]
name = "app-env"
value = "EXCHANGE_KEY=abc\\nMODE=paper\\n"
"""
Z = f"--zone={ZONE}"


@pytest.fixture
def emu(emulator):
    return emulator(CONFIG)


def attach(emu, address="127.0.0.21", name="External NAT"):
    return emu.gcloud(
        "compute",
        "instances",
        "add-access-config",
        "vm-a",
        Z,
        "--network-interface=nic0",
        f"--access-config-name={name}",
        f"--address={address}",
    )


def detach(emu, name="External NAT"):
    return emu.gcloud(
        "compute",
        "instances",
        "delete-access-config",
        "vm-a",
        Z,
        "--network-interface=nic0",
        f"--access-config-name={name}",
    )


# -- addresses -------------------------------------------------------------------------------


def test_addresses_describe_prints_the_static_address(emu):
    r = emu.gcloud(
        "compute", "addresses", "describe", "ip-a", f"--region={REGION}", "--format=value(address)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "127.0.0.21\n"
    status = emu.gcloud(
        "compute", "addresses", "describe", "ip-a", f"--region={REGION}", "--format=value(status)"
    )
    assert status.stdout == "RESERVED\n"


def test_unknown_address_is_a_not_found_error(emu):
    r = emu.gcloud("compute", "addresses", "describe", "nope", f"--region={REGION}")
    assert r.returncode == 1
    assert "Could not fetch resource:" in r.stderr
    assert f"projects/test-project/regions/{REGION}/addresses/nope' was not found" in r.stderr


# -- instances: lifecycle --------------------------------------------------------------------


def test_start_and_stop_move_the_instance_through_its_lifecycle(emu):
    r = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert r.returncode == 0, r.stderr
    assert "Updated [" in r.stderr and "Instance internal IP is 127.0.100.2" in r.stderr
    assert "external IP" not in r.stderr, "no access config yet, so no external IP"
    described = emu.gcloud("compute", "instances", "describe", "vm-a", Z, "--format=value(status)")
    assert described.stdout == "RUNNING\n"
    stopped = emu.gcloud("compute", "instances", "stop", "vm-a", Z)
    assert stopped.returncode == 0, stopped.stderr
    assert emu.instance("vm-a")["status"] == "TERMINATED"
    statuses = [e["status"] for e in emu.journal() if e.get("event") == "status"]
    assert statuses == ["PROVISIONING", "STAGING", "RUNNING", "STOPPING", "TERMINATED"]


def test_start_on_running_and_stop_on_terminated_are_no_ops(emu):
    assert emu.gcloud("compute", "instances", "stop", "vm-a", Z).returncode == 0
    assert emu.instance("vm-a")["status"] == "TERMINATED"
    assert emu.gcloud("compute", "instances", "start", "vm-a", Z).returncode == 0
    emu.clear_journal()
    again = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert again.returncode == 0, again.stderr
    assert not [e for e in emu.journal() if e.get("event") == "status"], "no status change"


def test_start_waits_through_a_slow_boot(emu):
    emu.set_instance(ZONE, "vm-a", provision_delay=1.5, staging_delay=0.5)
    r = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert r.returncode == 0, r.stderr
    assert emu.instance("vm-a")["status"] == "RUNNING"
    assert len(emu.calls("compute.zoneOperations.wait")) >= 1


def test_start_while_stopping_is_not_ready(emu):
    emu.set_instance(ZONE, "vm-a", status="RUNNING", stop_delay=5)
    r = emu.gcloud("compute", "instances", "stop", "vm-a", Z, "--async")
    assert r.returncode == 0, r.stderr
    assert "Stop instance in progress for [" in r.stderr
    started = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert started.returncode == 1
    assert "is not ready" in started.stderr


def test_the_state_hook_changes_nothing_when_its_precondition_does_not_hold(emu):
    # a test ending a repair must not boot a VM that its run's cleanup stopped meanwhile
    with pytest.raises(httpx.HTTPStatusError) as refused:
        emu.set_instance(ZONE, "vm-a", status="RUNNING", if_status="REPAIRING")
    assert refused.value.response.status_code == 409
    assert "vm-a is TERMINATED, not REPAIRING" in refused.value.response.text
    assert emu.instance("vm-a")["status"] == "TERMINATED"
    emu.set_instance(ZONE, "vm-a", status="RUNNING")
    emu.set_instance(ZONE, "vm-a", status="REPAIRING", if_status="RUNNING")
    emu.set_instance(ZONE, "vm-a", status="RUNNING", if_status="REPAIRING")
    assert emu.instance("vm-a")["status"] == "RUNNING"


def test_unknown_instance_is_a_not_found_error(emu):
    r = emu.gcloud("compute", "instances", "start", "ghost", Z)
    assert r.returncode == 1
    assert "was not found" in r.stderr


# -- access configs --------------------------------------------------------------------------


def test_access_config_attaches_the_static_address_and_marks_it_in_use(emu):
    r = attach(emu)
    assert r.returncode == 0, r.stderr
    assert "Updated [" in r.stderr
    inst = emu.instance("vm-a")
    assert [(a["name"], a["natIP"]) for a in inst["access_configs"]] == [
        ("External NAT", "127.0.0.21")
    ]
    addr = emu.address("ip-a")
    assert addr["status"] == "IN_USE"
    assert addr["users"] == [
        f"{emu.url}/compute/v1/projects/test-project/zones/{ZONE}/instances/vm-a"
    ]
    started = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert "Instance external IP is 127.0.0.21" in started.stderr


def test_second_access_config_is_refused(emu):
    assert attach(emu).returncode == 0
    r = attach(emu)
    assert r.returncode == 1
    assert "At most one access config currently supported." in r.stderr


def test_delete_access_config_releases_the_address(emu):
    assert attach(emu).returncode == 0
    r = detach(emu)
    assert r.returncode == 0, r.stderr
    call = emu.calls("compute.instances.deleteAccessConfig")[-1]
    assert "accessConfig=External+NAT" in call["query"], "gcloud form-encodes the name"
    assert emu.instance("vm-a")["access_configs"] == []
    assert emu.address("ip-a")["status"] == "RESERVED"


def test_deleting_a_missing_access_config_is_an_error(emu):
    r = detach(emu)
    assert r.returncode == 1
    assert "The access config was not found." in r.stderr


def test_attaching_an_unreserved_address_is_an_error(emu):
    r = attach(emu, address="127.0.0.99")
    assert r.returncode == 1
    assert "'127.0.0.99'" in r.stderr and "was not found" in r.stderr


# -- metadata and labels ---------------------------------------------------------------------


def test_add_metadata_from_file_sets_the_startup_script(emu, tmp_path):
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/bash\necho booted\n")
    r = emu.gcloud(
        "compute",
        "instances",
        "add-metadata",
        "vm-a",
        Z,
        f"--metadata-from-file=startup-script={script}",
    )
    assert r.returncode == 0, r.stderr
    assert emu.instance("vm-a")["metadata"]["startup-script"] == script.read_text()
    same = emu.gcloud(
        "compute",
        "instances",
        "add-metadata",
        "vm-a",
        Z,
        f"--metadata-from-file=startup-script={script}",
    )
    assert same.returncode == 0
    assert "No change requested; skipping update for [vm-a]." in same.stderr


def test_set_metadata_with_a_stale_fingerprint_fails(emu):
    base = f"/compute/v1/projects/test-project/zones/{ZONE}/instances/vm-a"
    auth = {"Authorization": "Bearer x"}
    fp = emu.http.get(base, headers=auth).json()["metadata"]["fingerprint"]
    ok = emu.http.post(
        base + "/setMetadata",
        headers=auth,
        json={"fingerprint": fp, "items": [{"key": "a", "value": "1"}]},
    ).json()
    assert ok["status"] == "DONE" and "error" not in ok
    stale = emu.http.post(
        base + "/setMetadata",
        headers=auth,
        json={"fingerprint": fp, "items": [{"key": "a", "value": "2"}]},
    ).json()
    assert stale["error"]["errors"][0]["message"] == (
        "Supplied fingerprint does not match current metadata fingerprint."
    )
    assert stale["httpErrorStatusCode"] == 412
    assert emu.instance("vm-a")["metadata"] == {"a": "1"}


def test_add_labels_uses_the_label_fingerprint(emu):
    r = emu.gcloud("compute", "instances", "add-labels", "vm-a", Z, "--labels=owner=trading")
    assert r.returncode == 0, r.stderr
    assert emu.instance("vm-a")["labels"] == {"owner": "trading"}


# -- secrets ---------------------------------------------------------------------------------


def test_secret_access_prints_the_payload_verbatim(emu):
    r = emu.gcloud("secrets", "versions", "access", "latest", "--secret=app-env")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "EXCHANGE_KEY=abc\nMODE=paper\n", "no newline added, nothing dropped"


def test_secret_access_carries_a_correct_crc32c(emu):
    body = emu.http.get(
        "/v1/projects/test-project/secrets/app-env/versions/latest:access",
        headers={"Authorization": "Bearer x"},
    ).json()
    data = base64.b64decode(body["payload"]["data"])
    assert int(body["payload"]["dataCrc32c"]) == crc32c(data)
    assert body["name"] == "projects/123456789012/secrets/app-env/versions/1"


def test_missing_secret_is_not_found(emu):
    r = emu.gcloud("secrets", "versions", "access", "latest", "--secret=nope")
    assert r.returncode == 1
    assert "NOT_FOUND" in r.stderr
    assert "projects/123456789012/secrets/nope" in r.stderr


def test_secrets_create_and_versions_add_make_new_latest_versions(emu, tmp_path):
    first = tmp_path / "v1"
    first.write_text("TOKEN=one\n")
    created = emu.gcloud("secrets", "create", "new-secret", f"--data-file={first}")
    assert created.returncode == 0, created.stderr
    second = tmp_path / "v2"
    second.write_text("TOKEN=two\n")
    added = emu.gcloud("secrets", "versions", "add", "new-secret", f"--data-file={second}")
    assert added.returncode == 0, added.stderr
    latest = emu.gcloud("secrets", "versions", "access", "latest", "--secret=new-secret")
    assert latest.stdout == "TOKEN=two\n"
    v1 = emu.gcloud("secrets", "versions", "access", "1", "--secret=new-secret")
    assert v1.stdout == "TOKEN=one\n"
    again = emu.gcloud("secrets", "create", "new-secret", f"--data-file={first}")
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_a_disabled_version_is_not_latest_and_is_refused_until_enabled(emu, tmp_path):
    second = tmp_path / "v2"
    second.write_text("EXCHANGE_KEY=new\n")
    assert (
        emu.gcloud("secrets", "versions", "add", "app-env", f"--data-file={second}").returncode == 0
    )
    off = emu.gcloud("secrets", "versions", "disable", "2", "--secret=app-env")
    assert off.returncode == 0, off.stderr
    latest = emu.gcloud("secrets", "versions", "access", "latest", "--secret=app-env")
    assert latest.stdout == "EXCHANGE_KEY=abc\nMODE=paper\n", "latest: the newest enabled one"
    refused = emu.gcloud("secrets", "versions", "access", "2", "--secret=app-env")
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "is in DISABLED state" in refused.stderr
    assert emu.gcloud("secrets", "versions", "enable", "2", "--secret=app-env").returncode == 0
    again = emu.gcloud("secrets", "versions", "access", "latest", "--secret=app-env")
    assert again.stdout == "EXCHANGE_KEY=new\n"


def test_any_payload_is_stored_and_read_back_byte_for_byte(emu, tmp_path):
    """gcloud sends the payload in the URL-safe base64 alphabet: `???` is `Pz8_`, and a realistic
    .env has `+` and `/` in its standard base64 too."""
    payloads = {
        "probe-secret": b"???",
        "env-secret": b"AGENT_TOKEN=k9+/x~~~\nJOB_COMMAND=python -m job --size=>>1\n\xff\xfe",
    }
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(data)
        created = emu.gcloud("secrets", "create", name, f"--data-file={tmp_path / name}")
        assert created.returncode == 0, created.stderr
        body = emu.http.get(
            f"/v1/projects/test-project/secrets/{name}/versions/latest:access",
            headers={"Authorization": "Bearer x"},
        ).json()
        assert base64.b64decode(body["payload"]["data"]) == data, name
    (tmp_path / "v2").write_bytes(b"???>")
    added = emu.gcloud(
        "secrets", "versions", "add", "probe-secret", f"--data-file={tmp_path / 'v2'}"
    )
    assert added.returncode == 0, added.stderr
    latest = emu.gcloud("secrets", "versions", "access", "latest", "--secret=probe-secret")
    assert latest.stdout == "???>"


def test_a_payload_that_is_not_base64_is_refused_as_the_api_refuses_it(emu):
    r = emu.http.post(
        "/v1/projects/test-project/secrets/app-env:addVersion",
        headers={"Authorization": "Bearer x"},
        json={"payload": {"data": "not base64!"}},
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Invalid value at 'payload.data' (TYPE_BYTES)."
    assert emu.gcloud("secrets", "versions", "access", "latest", "--secret=app-env").stdout == (
        "EXCHANGE_KEY=abc\nMODE=paper\n"
    ), "the refused payload left the secret as it was"


# -- Google's front end and IAM --------------------------------------------------------------


def test_a_post_without_content_length_is_refused_with_411_as_googles_front_end_does(emu):
    host, port = emu.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(
            "POST", f"/compute/v1/projects/test-project/zones/{ZONE}/instances/vm-a/start"
        )
        conn.putheader("Authorization", "Bearer x")
        conn.endheaders()  # no body, no Content-Length: what curl -X POST sends
        answer = conn.getresponse()
        page = answer.read().decode()
    finally:
        conn.close()
    assert answer.status == 411
    assert answer.getheader("content-type", "").startswith("text/html")
    assert "POST requests require a <code>Content-length</code> header." in page
    assert emu.instance("vm-a")["status"] == "TERMINATED", "the refused call did nothing"
    # gcloud sends Content-Length: 0 on its bodiless POSTs, so it is unaffected
    r = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert r.returncode == 0, r.stderr


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_injected_error_on_start_fails_once_then_start_works(emu, status):
    emu.fault("compute.instances.start", status=status, count=1)
    r = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert r.returncode == 1
    assert f"HTTPError {status}" in r.stderr
    assert emu.instance("vm-a")["status"] == "TERMINATED"
    again = emu.gcloud("compute", "instances", "start", "vm-a", Z)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("status", [503, 429])
def test_injected_error_on_add_access_config(emu, status):
    emu.fault("compute.instances.addAccessConfig", status=status, count=1)
    r = attach(emu)
    assert r.returncode == 1
    assert "Could not fetch resource:" in r.stderr
    assert emu.instance("vm-a")["access_configs"] == []
    assert attach(emu).returncode == 0


def test_injected_latency_delays_the_answer(emu):
    emu.fault("compute.addresses.get", delay=1.0)
    r = emu.gcloud(
        "compute", "addresses", "describe", "ip-a", f"--region={REGION}", "--format=value(address)"
    )
    assert r.returncode == 0
    assert emu.calls("compute.addresses.get")[-1]["duration"] >= 1.0


def test_requests_without_a_token_are_unauthenticated(emu):
    r = emu.http.get(f"/compute/v1/projects/test-project/zones/{ZONE}/instances/vm-a")
    assert r.status_code == 401
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"


def test_journal_records_method_path_query_and_status(emu):
    emu.gcloud("compute", "instances", "describe", "vm-a", Z)
    call = emu.calls("compute.instances.get")[-1]
    assert call["method"] == "GET"
    assert call["path"] == f"/compute/v1/projects/test-project/zones/{ZONE}/instances/vm-a"
    assert call["query"] == "alt=json"
    assert call["status"] == 200
    assert isinstance(call["time"], float)

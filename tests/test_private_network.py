"""The emulator's private network (`--private-network`): Google's own host names reach the
emulator over TLS from its own CA, so the real gcloud needs no endpoint override; and nothing
else is reachable: no packet and no name lookup leaves loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import EmulatorProcess, needs_gcloud, needs_private_network

pytestmark = [pytest.mark.e2e, needs_private_network]


@pytest.fixture
def private(tmp_path):
    emu = EmulatorProcess(None, tmp_path / "emulator", private=True)
    yield emu
    emu.stop()


def test_nothing_but_loopback_answers_inside_neither_an_address_nor_a_name(private):
    probe = (
        "import socket, sys\n"
        "for target in [('8.8.8.8', 53), ('1.1.1.1', 443), ('10.255.255.53', 53)]:\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=3)\n"
        "        print('reached', target)\n"
        "    except OSError as exc:\n"
        "        print('unreachable', target, exc.errno)\n"
        "for name in ['example.com', 'pypi.org', 'googleapis.com']:\n"
        "    try:\n"
        "        print('resolved', name, socket.gethostbyname(name))\n"
        "    except OSError:\n"
        "        print('unresolved', name)\n"
    )
    r = private.run(["python3", "-c", probe], timeout=60)
    assert r.returncode == 0, r.stderr
    assert "reached" not in r.stdout, r.stdout
    assert r.stdout.count("unreachable") == 3, r.stdout
    assert "unresolved example.com" in r.stdout and "unresolved pypi.org" in r.stdout, r.stdout
    routes = private.run(["ip", "route", "show", "default"])
    assert routes.stdout.strip() == "", f"a default route inside: {routes.stdout}"


def test_googles_names_are_the_emulator_over_tls_checked_against_its_ca(private):
    r = private.run(
        ["curl", "-sS", "-w", "\\n%{http_code}", "-H", "Authorization: Bearer x",
         "https://compute.googleapis.com/compute/v1/projects/demo-project/zones/"
         "us-central1-a/instances/vm-1"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n200") and '"name":"vm-1"' in r.stdout, r.stdout
    public_ca = "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"  # a public CA alone
    untrusted = private.run(["curl", "-sS", "--cacert", public_ca, "https://run.googleapis.com/"])
    assert untrusted.returncode == 60, "the certificate is trusted only through the emulator's CA"
    regional = private.run(["getent", "hosts", "asia-northeast3-run.googleapis.com"])
    assert regional.stdout.split()[0] == "127.0.0.1", regional.stdout


@needs_gcloud
def test_gcloud_inside_needs_no_endpoint_override(private):
    assert not [k for k in private.env if "ENDPOINT_OVERRIDES" in k], private.env
    r = private.gcloud(
        "compute", "instances", "describe", "vm-1", "--zone=us-central1-a",
        "--format=value(status)",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "TERMINATED\n"
    calls = [c for c in private.calls() if c["api"] == "compute.instances.get"]
    assert calls, "the emulator did not see gcloud's call"


def test_the_machines_own_hosts_file_is_left_alone(private):
    """Only the private network's mount namespace sees its /etc/hosts (a bind mount there)."""
    assert "googleapis.com" not in Path("/etc/hosts").read_text()
    inside = private.run(["cat", "/etc/hosts"])
    assert "127.0.0.1 compute.googleapis.com" in inside.stdout


def test_the_test_hooks_answer_outside_only(private):
    """A task or a guest inside must not mint a service account's token or read the journal."""
    for url in (
        f"{private.url}/_emulator/journal",
        "https://compute.googleapis.com/_emulator/state",
    ):
        inside = private.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url])
        assert inside.stdout == "404", (url, inside.stdout, inside.stderr)
    minted = private.run(
        ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json",
         "--data", '{"account": "x@demo-project.iam.gserviceaccount.com"}',
         f"{private.url}/_emulator/iam/token"],
    )  # fmt: skip
    assert "access_token" not in minted.stdout, minted.stdout
    assert private.http.get("/_emulator/health").status_code == 200, "outside, they answer"

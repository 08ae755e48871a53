"""The channel between the orchestrator and the agent: the token goes only over TLS, only to the
key whose pin the VM published as a guest attribute (docs/orchestrator.md, "How the trust
works")."""

from __future__ import annotations

import contextlib

import pytest

from tests.conftest import TOKEN
from tests.flow import Flow, make_tls_key
from tests.harness import needs_gcloud
from tests.network import Impostor, TcpRelay

pytestmark = [pytest.mark.e2e, needs_gcloud]


@pytest.fixture
def make_flow(emulator, tmp_path):
    """make(agent_internal=True, ...): the agent listens on the VM's internal address only,
    leaving the static IP to what a test puts on the path."""

    def make(agent_internal: bool = False, **kwargs) -> Flow:
        flow = Flow(tmp_path, **kwargs)
        if agent_internal:
            flow.guest_env["AGENT_HOST"] = flow.internal_ip()
        flow.emu = emulator(flow.config())
        assert flow.emu.instance("vm-0")["network_ip"] == flow.internal_ip()
        return flow

    return make


@pytest.fixture
def on_the_path():
    """start(kind, flow) -> a relay or an impostor on the static IP, where the orchestrator
    looks for the agent (which then listens on the VM's internal address only)."""
    with contextlib.ExitStack() as stack:

        def start(kind: str, flow: Flow) -> TcpRelay | Impostor:
            if kind == "relay":
                relay = TcpRelay(flow.static_ip(), flow.port, (flow.internal_ip(), flow.port))
                stack.callback(relay.close)
                return relay
            key, cert, _ = make_tls_key(flow.tmp / "impostor")
            impostor = Impostor(flow.static_ip(), flow.port, key, cert)
            stack.callback(impostor.close)
            return impostor

        yield start


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


def test_a_whole_run_through_a_relay_never_shows_the_token(make_flow, on_the_path):
    flow = make_flow(agent_internal=True, job="echo 'order placed'")
    relay = on_the_path("relay", flow)
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    assert "order placed" in r.stdout
    assert "TLS: the agent's key matches the pin vm-0 published" in r.stderr
    assert relay.connections >= 3, "health, the key check, the run: all through the relay"
    assert relay.sent[:1] == b"\x16", "the orchestrator's first bytes are a TLS handshake"
    assert TOKEN.encode() not in relay.sent, "the token crossed the relay in the clear"
    assert b"Authorization" not in relay.sent
    flow.assert_cleaned_up()


def test_with_agent_tls_0_the_token_crosses_in_the_clear_and_a_warning_says_so(
    make_flow, on_the_path
):
    flow = make_flow(agent_internal=True, tls=False)
    relay = on_the_path("relay", flow)
    r = flow.entrypoint()
    assert r.returncode == 0, r.stderr
    clear = [w for w in warnings(r.stderr) if "in the clear" in w]
    assert len(clear) == 1, f"one warning about the clear channel: {warnings(r.stderr)}"
    assert "AGENT_TLS=0" in clear[0]
    assert f"Bearer {TOKEN}".encode() in relay.sent, "the relay does see plain HTTP"
    flow.assert_cleaned_up()


def test_an_impostor_at_the_address_gets_no_token_and_the_run_never_starts(make_flow, on_the_path):
    flow = make_flow(agent_internal=True)
    impostor = on_the_path("impostor", flow)
    r = flow.entrypoint()
    assert r.returncode == 6, r.stderr
    assert f"something else answers at https://{flow.static_ip()}:{flow.port}" in r.stderr
    assert "nothing was sent with the token" in r.stderr
    assert impostor.requests, "the impostor answered the health check"
    leaked = [q for q in impostor.requests if "authorization" in {h.lower() for h in q["headers"]}]
    assert leaked == [], f"requests with a token reached the impostor: {leaked}"
    assert [q["path"] for q in impostor.requests] == ["/"] * len(impostor.requests)
    assert flow.runs() == [], "the job ran"
    flow.assert_cleaned_up()


def test_without_guest_attributes_it_exits_6_says_what_to_set_and_sends_nothing(
    make_flow, on_the_path
):
    flow = make_flow(agent_internal=True, guest_attributes=False)
    relay = on_the_path("relay", flow)
    r = flow.entrypoint(PIN_WAIT="3")
    assert r.returncode == 6, r.stderr
    assert "never published its TLS key" in r.stderr
    assert "enable-guest-attributes=TRUE" in r.stderr
    assert "compute.instances.getGuestAttributes" in r.stderr, "it names the IAM permission too"
    assert TOKEN.encode() not in relay.sent and b"Authorization" not in relay.sent
    assert flow.runs() == []
    flow.assert_cleaned_up()


def test_internal_address_mode_talks_to_the_vms_internal_ip_and_still_attaches_the_static_one(
    make_flow,
):
    flow = make_flow(agent_internal=True, job="echo 'via the VPC'")
    r = flow.entrypoint(AGENT_ADDRESS="internal")
    assert r.returncode == 0, r.stderr
    assert "via the VPC" in r.stdout
    assert f"answers on https://{flow.internal_ip()}:{flow.port}" in r.stderr
    attached = flow.emu.calls("compute.instances.addAccessConfig")
    assert [c["status"] for c in attached] == [200], "the static IP is attached in both modes"
    assert f"detached {flow.static_ip()} from vm-0" in r.stderr
    flow.assert_cleaned_up()


def test_a_bad_agent_address_or_tls_setting_is_a_configuration_error(make_flow):
    flow = make_flow()
    flow.emu.clear_journal()
    for setting, value, message in (
        ("AGENT_ADDRESS", "public", "AGENT_ADDRESS must be 'static' or 'internal'"),
        ("AGENT_TLS", "yes", "AGENT_TLS must be 0 or 1"),
    ):
        r = flow.entrypoint(**{setting: value})
        assert r.returncode == 2, r.stderr
        assert message in r.stderr
    assert flow.emu.calls() == [], "no API call before the configuration is valid"

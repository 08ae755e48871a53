"""startup.sh's TLS step on its own (sourced, no VM): the agent's key is made once, kept,
private, made again when it cannot be read; its pin is curl's --pinnedpubkey of that key."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

from tests.conftest import REPO
from tests.flow import pin_of


def ensure_tls_key(tls_dir: Path) -> tuple[str, str]:
    """(pin, log) of one run of ensure_tls_key, with no metadata server to publish to."""
    user = pwd.getpwuid(os.getuid()).pw_name
    script = f'source {REPO / "startup.sh"}; ensure_tls_key; printf "PIN=%s\\n" "$TLS_PIN"'
    env = {
        **os.environ,
        "TLS_DIR": str(tls_dir),
        "AGENT_TLS": "1",
        "APP_USER": user,
        "APP_HOME": str(tls_dir.parent),  # read_settings sets it on a VM
        "GCE_METADATA_HOST": "127.0.0.1:9",  # nothing listens: publishing fails, boot goes on
    }
    r = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    log = r.stdout + r.stderr  # INFO on stdout, WARNING and ERROR on stderr
    pin = next(ln.removeprefix("PIN=") for ln in r.stdout.splitlines() if ln.startswith("PIN="))
    return pin, log


def test_the_key_is_made_once_private_and_kept_at_the_next_boot(tmp_path):
    tls = tmp_path / "tls"
    pin, log = ensure_tls_key(tls)
    assert "no key yet: made one" in log
    key = tls / "agent-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600, "the key is readable by its owner only"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    assert pin == pin_of(key), "the pin is the SHA-256 of the key's DER public key, base64"
    again, log = ensure_tls_key(tls)
    assert again == pin, "a later boot keeps the key, and so the pin"
    assert "kept the key" in log


def test_an_unreadable_key_is_made_again_and_the_log_says_so(tmp_path):
    tls = tmp_path / "tls"
    pin, _ = ensure_tls_key(tls)
    (tls / "agent-key.pem").write_text("not a key\n")
    new, log = ensure_tls_key(tls)
    assert "could not be read: made a new one" in log
    assert new != pin


def test_a_deleted_key_is_made_again_and_its_certificate_follows(tmp_path):
    tls = tmp_path / "tls"
    pin, _ = ensure_tls_key(tls)
    (tls / "agent-key.pem").unlink()
    new, log = ensure_tls_key(tls)
    assert "no key yet: made one" in log and new != pin
    cert_key = subprocess.run(
        ["openssl", "x509", "-in", str(tls / "agent-cert.pem"), "-noout", "-pubkey"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key_pub = subprocess.run(
        ["openssl", "pkey", "-in", str(tls / "agent-key.pem"), "-pubout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert cert_key == key_pub, "the certificate is for the new key"


def test_publishing_the_pin_failing_does_not_stop_the_boot(tmp_path):
    pin, log = ensure_tls_key(tmp_path / "tls")
    assert pin.startswith("sha256//")
    assert "could not publish the guest attribute vm-job-agent/tls-pin" in log

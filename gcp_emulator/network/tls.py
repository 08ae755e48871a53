"""The emulator's own certificate authority, and the certificate it answers Google's host names
with inside its private network (network/namespace.py): `*.googleapis.com` (every API, the
regional Cloud Run hosts among them), `googleapis.com` and `metadata.google.internal`.

Made with openssl at the emulator's start, in its state directory, and trusted only inside the
private network: its bundle (the system's CAs and this one) is bind-mounted there over the
system's, so curl trusts it as it is, and gcloud through its `core/custom_ca_certs_file`
property (`CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE`)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NAMES = ("*.googleapis.com", "googleapis.com", "metadata.google.internal")


@dataclass
class Certificates:
    ca: Path  # the CA's certificate
    key: Path  # the server's key
    cert: Path  # the server's certificate, for NAMES
    bundle: Path  # the system's CAs and ours: what the private network trusts


def make(directory: Path) -> Certificates:
    """A CA and a server certificate for Google's names, signed by it (EC P-256, 30 days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca-key.pem", "ca.pem", "key.pem", "server.csr", "cert.pem")
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-days", "30", "-subj", "/CN=gcp_emulator CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", ca_key, "-out", ca,
    )  # fmt: skip
    openssl("req", "-new", *ec, "-subj", "/CN=googleapis.com", "-keyout", key, "-out", csr)
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName="
        + ",".join(f"DNS:{name}" for name in NAMES)
        + "\n"
    )
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "30", "-extfile", extensions, "-out", cert,
    )  # fmt: skip
    key.chmod(0o600)
    ca_key.chmod(0o600)
    bundle = directory / "ca-bundle.crt"
    system = SYSTEM_BUNDLE.read_text() if SYSTEM_BUNDLE.exists() else ""
    bundle.write_text(system.rstrip("\n") + ("\n" if system else "") + ca.read_text())
    return Certificates(ca=ca, key=key, cert=cert, bundle=bundle)


def openssl(*args: str | Path) -> None:
    r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")

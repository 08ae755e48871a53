"""startup.sh's own readers, sourced, against a fake metadata server, Secret Manager and PyPI on
loopback (no VM, no gcloud): a secret read with the VM's token from the metadata server through
Secret Manager's REST API, its CRC32C checked, tried again where Google says to, and a clear
error where not; uv's wheel from PyPI, its sha256 checked."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gcp_emulator.core.crc32c import crc32c
from tests.conftest import REPO

PROJECT = "vm-project"
EMAIL = f"vm-agent@{PROJECT}.iam.gserviceaccount.com"
ACCESS = "/v1/projects/vm-project/secrets/app-env/versions/latest:access"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"


def payload(data: bytes, crc: int | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"data": base64.b64encode(data).decode()}
    body["dataCrc32c"] = str(crc32c(data) if crc is None else crc)
    return 200, {"name": "projects/1/secrets/app-env/versions/3", "payload": body}


def google_error(code: int, status: str, message: str, reason: str = "") -> tuple[int, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
    return code, {"error": error}


class Fake:
    """Scripted answers by path: each request takes the next of its path's list (the last one
    repeats); every request is noted with its Authorization header."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, Any]]] = {
            TOKEN_PATH: [
                (
                    200,
                    {"access_token": "ya29.vm-token-1", "expires_in": 3599, "token_type": "Bearer"},
                )
            ],
            "/computeMetadata/v1/project/project-id": [(200, PROJECT)],
            "/computeMetadata/v1/instance/service-accounts/default/email": [(200, EMAIL)],
        }
        self.seen: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                fake.seen.append((path, self.headers.get("Authorization", "")))
                queue = fake.answers.get(path) or [(404, "Not Found")]
                code, body = queue.pop(0) if len(queue) > 1 else queue[0]
                data = (
                    body
                    if isinstance(body, bytes)
                    else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
                )
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, path: str) -> list[str]:
        return [auth for p, auth in self.seen if p == path]


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.server.shutdown()
    f.server.server_close()


def run(fake: Fake, tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """script after sourcing startup.sh, with the fake as metadata server and Secret Manager."""
    return subprocess.run(
        ["bash", "-c", f"source {REPO / 'startup.sh'}; set +E; cd {tmp_path}; {script}"],
        env={
            "PATH": os.environ["PATH"],
            "GCE_METADATA_HOST": fake.url.removeprefix("http://"),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER": f"{fake.url}/",
            "SECRET_RETRY_SECONDS": "4",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


READ = (
    'if secret_access app-env out; then echo "OK $SECRET_DETAIL"; else echo "ERR $SECRET_ERROR"; fi'
)


def test_a_secret_is_read_with_the_vms_token_and_its_crc32c_checked(fake, tmp_path):
    value = b"AGENT_TOKEN=abc\nEXAMPLE=\xc3\xa9t\xc3\xa9\n"
    fake.answers[ACCESS] = [payload(value)]
    r = run(fake, tmp_path, READ)
    assert r.stdout.strip() == "OK checked", r.stdout + r.stderr
    assert (tmp_path / "out").read_bytes() == value, "the bytes as stored, no newline added"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o600
    assert fake.calls(ACCESS) == ["Bearer ya29.vm-token-1"], "the metadata server's token"
    assert not list(tmp_path.glob("out.answer.*")), "the answer (base64 of the secret) is removed"
    assert "ya29" not in r.stdout + r.stderr, "the token is never printed"


def test_a_crc32c_given_as_a_number_is_checked_and_none_given_is_said(fake, tmp_path):
    value = b"-----BEGIN KEY-----\n" + bytes(range(256)) * 8 + b"\n"  # every byte value
    status, body = payload(value)
    body["payload"]["dataCrc32c"] = int(body["payload"]["dataCrc32c"])
    fake.answers[ACCESS] = [(status, body)]
    r = run(fake, tmp_path, READ)
    assert r.stdout.strip() == "OK checked", r.stdout + r.stderr
    assert (tmp_path / "out").read_bytes() == value

    del body["payload"]["dataCrc32c"]
    fake.answers[ACCESS] = [(status, body)]
    r = run(fake, tmp_path, READ)
    assert r.stdout.strip() == "OK unchecked", r.stdout + r.stderr


def test_a_damaged_payload_is_read_again_and_refused_if_it_stays_damaged(fake, tmp_path):
    good = payload(b"AGENT_TOKEN=abc\n")
    fake.answers[ACCESS] = [payload(b"AGENT_TOKEN=abc\n", crc=12345), good]
    r = run(fake, tmp_path, READ)
    assert r.stdout.strip() == "OK checked", r.stdout + r.stderr
    assert len(fake.calls(ACCESS)) == 2

    fake.answers[ACCESS] = [payload(b"AGENT_TOKEN=abc\n", crc=12345)]
    r = run(fake, tmp_path, "rm -f out; " + READ)
    assert "ERR its CRC32C does not match its data" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "out").exists(), "nothing damaged is left to be used"


def test_429_and_503_are_tried_again_and_a_401_once_with_a_new_token(fake, tmp_path):
    unavailable = google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
    busy = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
    expired = google_error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
    fake.answers[ACCESS] = [unavailable, busy, expired, payload(b"A=1\n")]
    fake.answers[TOKEN_PATH] = [
        (200, {"access_token": "ya29.first", "expires_in": 3599, "token_type": "Bearer"}),
        (200, {"access_token": "ya29.second", "expires_in": 3599, "token_type": "Bearer"}),
    ]
    r = run(fake, tmp_path, READ, SECRET_RETRY_SECONDS="20")
    assert r.stdout.strip() == "OK checked", r.stdout + r.stderr
    assert fake.calls(ACCESS) == ["Bearer ya29.first"] * 3 + ["Bearer ya29.second"]


def test_a_token_not_there_yet_at_boot_is_waited_for(fake, tmp_path):
    fake.answers[TOKEN_PATH] = [
        (404, "Not Found"),
        (503, "busy"),
        (200, {"access_token": "ya29.late", "expires_in": 60}),
    ]
    fake.answers[ACCESS] = [payload(b"A=1\n")]
    r = run(fake, tmp_path, READ, SECRET_RETRY_SECONDS="20")
    assert r.stdout.strip() == "OK checked", r.stdout + r.stderr
    assert fake.calls(ACCESS) == ["Bearer ya29.late"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            google_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'secretmanager.versions.access' "
                "denied for resource 'projects/vm-project/secrets/app-env/versions/"
                "latest' (or it may not exist).",
            ),
            f"permission denied: Permission 'secretmanager.versions.access' denied for resource "
            f"'projects/vm-project/secrets/app-env/versions/latest' (or it may not exist).: the "
            f"VM's service account {EMAIL} needs roles/secretmanager.secretAccessor on secret "
            f"app-env (gcloud secrets add-iam-policy-binding app-env --project=vm-project "
            f"--member=serviceAccount:{EMAIL} --role=roles/secretmanager.secretAccessor)",
        ),
        (
            google_error(
                403,
                "PERMISSION_DENIED",
                "Secret Manager API has not been used in project 1 before or it is disabled.",
                reason="SERVICE_DISABLED",
            ),
            "the Secret Manager API is not enabled in project vm-project: Secret Manager API has "
            "not been used in project 1 before or it is disabled. (gcloud services enable "
            "secretmanager.googleapis.com --project=vm-project)",
        ),
        (
            google_error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            ),
            "the VM's access scopes do not reach Secret Manager",
        ),
        (
            google_error(
                404,
                "NOT_FOUND",
                "Secret [projects/1/secrets/app-env] not found or has no versions.",
            ),
            "not found: Secret [projects/1/secrets/app-env] not found or has no versions. (no "
            "secret app-env with an enabled version in project vm-project",
        ),
        (
            (502, "<html>Bad Gateway</html>"),
            "HTTP 502 <html>Bad Gateway</html> (still after 4s)",
        ),
    ],
    ids=["permission", "api-disabled", "scopes", "not-found", "not-json"],
)
def test_a_refusal_says_what_it_is_and_what_to_do(fake, tmp_path, answer, expected):
    fake.answers[ACCESS] = [answer]
    r = run(fake, tmp_path, READ)
    assert r.stdout.startswith("ERR "), r.stdout + r.stderr
    assert expected in r.stdout, r.stdout
    assert not (tmp_path / "out").exists()
    retried = answer[0] >= 500
    assert (len(fake.calls(ACCESS)) > 1) == retried, "only 429 and 5xx are tried again"


def test_a_failed_read_fails_the_boot_naming_the_step_and_the_secret(fake, tmp_path):
    fake.answers[ACCESS] = [google_error(404, "NOT_FOUND", "Secret [x] not found.")]
    (tmp_path / ".env").write_text("OLD=1\n")
    r = run(
        fake,
        tmp_path,
        f'APP_USER=$(id -un); fetch_secret app-env "{tmp_path}/.env" '
        '"boot 4/6 .env" "; the agent is not started"; echo SURVIVED',
    )
    assert r.returncode == 1 and "SURVIVED" not in r.stdout
    assert "boot 4/6 .env: cannot read secret app-env: not found: Secret [x] not found." in r.stderr
    assert r.stderr.rstrip().endswith("; the agent is not started")
    assert (tmp_path / ".env").read_text() == "OLD=1\n", "the old .env is left alone"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"], "no temp file left"


def test_the_token_never_goes_in_the_clear_to_another_machine(fake, tmp_path):
    r = run(fake, tmp_path, READ, CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER="http://10.1.2.3/")
    refused = "ERR CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER=http://10.1.2.3/ is neither https"
    assert refused in r.stdout, r.stdout
    assert fake.calls(TOKEN_PATH) == [], "not even the token is fetched"


def test_no_service_account_is_a_clear_error(fake, tmp_path):
    fake.answers[TOKEN_PATH] = [(404, "Not Found")]
    r = run(fake, tmp_path, READ, SECRET_RETRY_SECONDS="1")
    assert "ERR the metadata server has no token for the VM's default service account" in r.stdout
    assert "set-service-account" in r.stdout


# -- uv from PyPI --------------------------------------------------------------------------------


def wheel(version: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"uv-{version}.data/scripts/uv", f"#!/bin/sh\necho 'uv {version} (fake)'\n")
        z.writestr(f"uv-{version}.dist-info/METADATA", "Name: uv\n")
    return buf.getvalue()


def pypi(fake: Fake, data: bytes, sha: str | None = None) -> None:
    arch = platform.machine()
    name = f"uv-9.9.9-py3-none-manylinux_2_17_{arch}.manylinux2014_{arch}.whl"
    files = [
        (f"uv-9.9.9-py3-none-musllinux_1_1_{arch}.whl", b"not for glibc"),
        ("uv-9.9.9-py3-none-win_amd64.whl", b"not for Linux"),
        (name, data),
    ]
    urls = []
    for filename, content in files:
        fake.answers[f"/files/{filename}"] = [(200, content)]
        digest = sha if filename == name and sha else hashlib.sha256(content).hexdigest()
        urls.append(
            {
                "filename": filename,
                # absolute, as pypi.org answers, and relative, as a mirror may
                "url": f"../../files/{filename}"
                if filename == name
                else f"{fake.url}/files/{filename}",
                "digests": {"sha256": digest},
                "packagetype": "bdist_wheel",
            }
        )
    fake.answers["/pypi/uv/json"] = [(200, {"info": {"version": "9.9.9"}, "urls": urls})]


def test_uv_is_installed_from_its_wheel_on_pypi_with_its_sha256_checked(fake, tmp_path):
    pypi(fake, wheel("9.9.9"))
    r = run(fake, tmp_path, f'python3 -I -S -c "$HELPER_PY" uv {fake.url} {tmp_path}/uv && ./uv')
    assert r.returncode == 0, r.stderr
    assert "uv 9.9.9 (uv-9.9.9-py3-none-manylinux_2_17_" in r.stdout
    assert "uv 9.9.9 (fake)" in r.stdout, "the binary from the wheel runs"
    assert [p for p, _ in fake.seen if p.startswith("/files/")] == [
        f"/files/uv-9.9.9-py3-none-manylinux_2_17_{platform.machine()}"
        f".manylinux2014_{platform.machine()}.whl"
    ], "only the glibc wheel for this machine is downloaded"


def test_a_wheel_whose_sha256_does_not_match_pypis_is_not_installed(fake, tmp_path):
    pypi(fake, wheel("9.9.9"), sha="0" * 64)
    r = run(fake, tmp_path, f'python3 -I -S -c "$HELPER_PY" uv {fake.url} {tmp_path}/uv')
    assert r.returncode != 0
    assert "its sha256 is" in r.stderr and "PyPI says 0000" in r.stderr
    assert not (tmp_path / "uv").exists() and not (tmp_path / "uv.tmp").exists()

"""The emulator as a process (`python -m gcp_emulator serve`), with helpers for its test hooks
and for running the real gcloud CLI against it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gcp_emulator.network import namespace

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"  # the agents' token in every test
GCLOUD = shutil.which("gcloud")
needs_gcloud = pytest.mark.skipif(
    GCLOUD is None,
    reason="the Google Cloud CLI (gcloud) is not on PATH; install it to run the cloud tests",
)


PRIVATE_NETWORK_UNAVAILABLE = namespace.unavailable()
needs_private_network = pytest.mark.skipif(
    PRIVATE_NETWORK_UNAVAILABLE is not None,
    reason=f"the emulator's private network cannot be made here: {PRIVATE_NETWORK_UNAVAILABLE} "
    "(gcloud run and gcloud scheduler resolve names of Google's; they run only where nothing "
    "can leave the machine)",
)


class EmulatorProcess:
    """`python -m gcp_emulator serve --config F --state-dir D` on a free loopback port; with
    private, in a network of its own (`--private-network`), where `inside` runs commands."""

    def __init__(
        self,
        config: Path | None,
        state_dir: Path,
        private: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.private = private
        argv = [sys.executable, "-m", "gcp_emulator", "serve", "--state-dir", str(state_dir), "-v"]
        if config is not None:
            argv += ["--config", str(config)]
        if private:
            argv.append("--private-network")
        self.log = state_dir.parent / f"{state_dir.name}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        self.env: dict[str, str] = {}
        self.clock_env: dict[str, str] = {}  # the emulator's clock, once a test moved it
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").rstrip("\n").partition("=")
                self.env[key] = value.strip("'")
            elif line.startswith("#"):
                break
        else:
            raise AssertionError(f"emulator did not start: {self.log.read_text()}")
        self.url = self.env["GCP_EMULATOR_URL"]
        self.http = httpx.Client(base_url=self.url, timeout=30)

    # -- test hooks ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return self.http.get("/_emulator/state").json()

    def instance(self, name: str) -> dict[str, Any]:
        for inst in self.state()["instances"]:
            if inst["name"] == name:
                return inst
        raise AssertionError(f"no instance {name}")

    def address(self, name: str) -> dict[str, Any]:
        for addr in self.state()["addresses"]:
            if addr["name"] == name:
                return addr
        raise AssertionError(f"no address {name}")

    def journal(self) -> list[dict[str, Any]]:
        return self.http.get("/_emulator/journal").json()["entries"]

    def calls(self, api: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.journal() if e["kind"] == "request" and (api is None or e["api"] == api)
        ]

    def clear_journal(self) -> None:
        self.http.delete("/_emulator/journal")

    def fault(
        self, api: str, status: int | None = None, count: int = 1, delay: float = 0.0
    ) -> None:
        r = self.http.post(
            "/_emulator/faults", json={"api": api, "status": status, "count": count, "delay": delay}
        )
        r.raise_for_status()

    def stockout(
        self,
        zone: str,
        machine_type: str = "*",
        code: str = "ZONE_RESOURCE_POOL_EXHAUSTED",
        count: int = -1,
    ) -> None:
        """Starts in zone of a VM of machine_type refused with code, count times (-1: all)."""
        body = {"zone": zone, "machine_type": machine_type, "code": code, "count": count}
        self.http.post("/_emulator/stockouts", json=body).raise_for_status()

    def move_clock(self, to: float | None = None, by: float | None = None) -> float:
        """The emulator's clock forward, to the epoch TO or BY seconds (while nothing runs): its
        new time. What `run` starts from then on keeps that clock."""
        body = {"to": to} if to is not None else {"by": by}
        r = self.http.post("/_emulator/clock", json=body, timeout=30)
        assert r.status_code == 200, r.text
        self.clock_env = {"VM_JOB_CLOCK_OFFSET": str(r.json()["offset"])}
        return datetime.fromisoformat(r.json()["time"].replace("Z", "+00:00")).timestamp()

    def set_instance(self, zone: str, name: str, **fields: Any) -> dict[str, Any]:
        r = self.http.post(f"/_emulator/instances/{zone}/{name}", json=fields)
        r.raise_for_status()
        return r.json()

    def wait_status(self, name: str, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.instance(name)["status"] != status:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} not {status} after {timeout} s: {self.instance(name)['status']}"
                )
            time.sleep(0.05)

    # -- the real CLI ----------------------------------------------------------------------

    def gcloud(
        self, *args: str, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run([GCLOUD or "gcloud", *args], timeout=timeout, **env)

    def inside(self, argv: list[str]) -> list[str]:
        """argv as it runs to reach the emulator: in its private network when it has one."""
        if not self.private:
            return argv
        return [
            "nsenter",
            f"--target={self.env['GCP_EMULATOR_NETNS']}",
            "--net",
            "--mount",
            "--",
            *argv,
        ]

    def run(
        self, argv: list[str], timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """argv with the emulator's environment (and env), where it reaches the emulator. gcloud
        run and gcloud scheduler only in the private network: with a loopback override, gcloud
        run resolves REGION-<the override's host>, a DNS query on this machine's network."""
        words = [a for a in argv[1:] if not a.startswith("-") and a not in ("alpha", "beta")]
        if Path(argv[0]).name == "gcloud" and words[:1] in (["run"], ["scheduler"]):
            assert self.private, f"gcloud {words[0]} on an emulator without its private network"
        full_env = {**os.environ, **self.env, **self.clock_env, **env}
        return subprocess.run(
            self.inside(argv),
            env={k: v for k, v in full_env.items() if v is not None},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.http.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        stop_group(self.proc, 30)


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM a process started in its own session, SIGKILL its group after grace seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def reap(proc: subprocess.Popen, grace: float = 10) -> tuple[str | bytes | None, ...]:
    """A test's bounded clean-up of a child it started: SIGKILL it (its whole group when it
    leads one) and collect its output for at most grace seconds. Pipes that a grandchild still
    holds are closed, not waited on: one hang costs seconds, not the suite's timeout."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait(grace)
        return (None, None)


class WebhookReceiver:
    """A webhook on 127.0.0.1 (a free port), as an alert's notification channel: the JSON bodies
    posted to it, each with when it arrived (`arrived`, epoch seconds)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.arrived.append(time.time())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?auth_token=t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

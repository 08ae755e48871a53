"""Shared fixtures: the agent in-process (TestClient) and as a real uvicorn process."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.settings import Settings
from gcp_emulator.config import dump_config
from gcp_emulator.demo import deployment, free_port
from tests.deployed import Deployed
from tests.flow import Flow
from tests.harness import REPO, TOKEN, EmulatorProcess, stop_group

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def finished(client: TestClient | httpx.Client, run_id: str, wait: float = 30) -> dict:
    """Long-poll a run until it is no longer running."""
    deadline = time.monotonic() + wait
    while True:
        r = client.get(f"/runs/{run_id}", params={"wait": 10}, headers=AUTH)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "running":
            return r.json()
        assert time.monotonic() < deadline, f"run {run_id} still running after {wait} s"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """make(**settings) -> a started TestClient over the real app; stopped after the test."""
    with contextlib.ExitStack() as stack:

        def make(job_env: dict[str, str] | None = None, **overrides: object) -> TestClient:
            values = {
                "agent_token": TOKEN,
                "state_dir": tmp_path / "state",
                "idle_shutdown": 0,
                "kill_grace": 1,
                **overrides,
            }
            settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
            return stack.enter_context(TestClient(create_app(settings, job_env=job_env)))

        yield make


class LiveAgent:
    """`uvicorn fastapi_app:app` as its own process on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        tls: tuple[Path, Path] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.tls = tls  # (key, cert): serve HTTPS
        self.nofile = nofile  # the agent's open-file limit
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "agent.log"

    def start(self, wait: bool = True) -> LiveAgent:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(REPO),
            "fastapi_app:app",
            "--http",  # as startup.sh runs it
            "agent.connections:GuardedH11Protocol",
            "--backlog",
            "256",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.tls:
            argv += ["--ssl-keyfile", str(self.tls[0]), "--ssl-certfile", str(self.tls[1])]
        nofile = self.nofile

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=limit_files,
            )
        if wait:
            wait_until(self.ready, 20, f"the agent on {self.url}")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"agent exited with {self.proc.returncode}: {self.log.read_text()}"
            )
        try:
            # health over the test's own self-signed key: nothing to trust, no token sent
            return httpx.get(self.url + "/", timeout=1, verify=False).status_code == 200  # noqa: S501
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the agent only (not the job's own process group), as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 15)


@pytest.fixture
def live_agent(tmp_path: Path) -> Iterator[Callable[..., LiveAgent]]:
    """make(**env) -> a running uvicorn agent in tmp_path; stopped after the test."""
    agents: list[LiveAgent] = []

    def make(
        start: bool = True,
        tls: tuple[Path, Path] | None = None,
        nofile: int | None = None,
        **env: str,
    ) -> LiveAgent:
        full_env = {
            **os.environ,
            "AGENT_TOKEN": TOKEN,
            "STATE_DIR": str(tmp_path / "state"),
            "IDLE_SHUTDOWN": "0",
            "KILL_GRACE": "1",
            **env,
        }
        live = LiveAgent(tmp_path, full_env, tls=tls, nofile=nofile)
        agents.append(live)
        return live.start() if start else live

    yield make
    for live in agents:
        live.stop()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Callable[..., EmulatorProcess]]:
    """start(toml_text, private=False) -> the emulator serving that configuration (in its
    private network with private); stopped after the test."""
    started: list[EmulatorProcess] = []

    def start(config: str | None = None, private: bool = False) -> EmulatorProcess:
        n = len(started)
        path = None
        if config is not None:
            path = tmp_path / f"emulator-{n}.toml"
            path.write_text(textwrap.dedent(config))
        emu = EmulatorProcess(path, tmp_path / f"emulator-{n}", private=private)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def make_flow(emulator, tmp_path):
    """make(**Flow fields) -> a Flow (tests/flow.py) whose VMs the emulator serves."""

    def make(**kwargs) -> Flow:
        flow = Flow(tmp_path, **kwargs)
        flow.emu = emulator(flow.config(), private=flow.private)
        return flow

    return make


@pytest.fixture
def deployed(emulator):
    """make(**deployment's options) -> a deployment's inputs and its empty project. The VM's disk
    is outside pytest's tmp_path: as root, that is private to root, and the agent's user must
    reach the disk."""
    base = Path(tempfile.mkdtemp(prefix="vm-job-deploy-"))
    base.chmod(0o755)

    def make(**kwargs: Any) -> Deployed:
        dep = deployment(base / "deployment", **kwargs)
        emu = emulator(dump_config(dep.config), private=True)
        return Deployed(emu, dep)

    yield make
    shutil.rmtree(base, ignore_errors=True)

"""The whole flow on the emulator: VMs whose guest is our agent, and entrypoint.sh run as an
operator (or Cloud Run) runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, TOKEN, free_port
from tests.harness import EmulatorProcess

ZONE = "asia-northeast3-c"
REGION = "asia-northeast3"
PROJECT = "flow-project"


def agent_guest_script(extra: str = "") -> str:
    """A startup-script that boots the agent straight from this checkout."""
    return textwrap.dedent(f"""\
        #!/bin/bash
        {extra}
        cd {shlex.quote(str(REPO))}
        exec {shlex.quote(sys.executable)} -m uvicorn fastapi_app:app \\
          --host "$AGENT_HOST" --port "$AGENT_PORT" --timeout-graceful-shutdown 3
        """)


@dataclass
class Flow:
    """N VMs (vm-0...), N static addresses (ip-0...), one agent port; a job that notes
    every run in runs.log ("<DRY_RUN> <RUN_ID>") before running JOB."""

    tmp: Path
    count: int = 1
    job: str = "echo 'job output line'"
    script: str = field(default_factory=agent_guest_script)
    emu: EmulatorProcess | None = None
    port: int = field(default_factory=free_port)

    def runs_file(self, i: int = 0) -> Path:
        return self.tmp / f"vm-{i}" / "runs.log"

    def runs(self, i: int = 0) -> list[str]:
        f = self.runs_file(i)
        return f.read_text().splitlines() if f.exists() else []

    def config(self) -> str:
        parts = [f'project = "{PROJECT}"\nregion = "{REGION}"\nzone = "{ZONE}"\n']
        for i in range(self.count):
            vm_dir = self.tmp / f"vm-{i}"
            vm_dir.mkdir(parents=True, exist_ok=True)
            job = f'echo "${{DRY_RUN:-0}} $RUN_ID" >> {self.runs_file(i)}; {self.job}'
            env = {
                "AGENT_TOKEN": TOKEN,
                "AGENT_PORT": str(self.port),
                "STATE_DIR": str(vm_dir / "state"),
                "IDLE_SHUTDOWN": "0",
                "KILL_GRACE": "2",
                "JOB_COMMAND": job,
            }
            env_toml = ", ".join(f"{k} = {toml_str(v)}" for k, v in env.items())
            parts.append(f"""
[[instances]]
name = "vm-{i}"
shutdown_grace = 5
env = {{ {env_toml} }}
metadata = {{ startup-script = {toml_str(self.script)} }}

[[addresses]]
name = "ip-{i}"
address = "127.0.{60 + i}.{10 + i}"
""")
        return "".join(parts)

    def env(self, **overrides: str) -> dict[str, str]:
        assert self.emu is not None
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLOUD_RUN_", "AGENT_", "INSTANCE"))
        }
        env = {
            **base,
            **self.emu.env,
            "PROJECT_ID": PROJECT,
            "REGION": REGION,
            "ZONE": ZONE,
            "INSTANCE": "vm-0",
            "STATIC_NAME": "ip-0",
            "AGENT_TOKEN": TOKEN,
            "AGENT_PORT": str(self.port),
            "BOOT_TIMEOUT": "60",
            "RUN_TIMEOUT": "120",
            "STOP_TIMEOUT": "60",
            "API_TIMEOUT": "30",
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v is not None}

    def entrypoint(
        self, *args: str, timeout: float = 180, **overrides: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", *args, str(REPO / "entrypoint.sh")],
            env=self.env(**overrides),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.tmp,
        )

    def popen(self, **overrides: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", str(REPO / "entrypoint.sh")],
            env=self.env(**overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.tmp,
        )

    def assert_cleaned_up(self, i: int = 0) -> None:
        assert self.emu is not None
        inst = self.emu.instance(f"vm-{i}")
        assert inst["status"] == "TERMINATED", f"vm-{i} left {inst['status']}"
        assert inst["access_configs"] == [], f"vm-{i} still has {inst['access_configs']}"
        assert self.emu.address(f"ip-{i}")["status"] == "RESERVED"
        assert inst["guest_pids"] == [], "guest processes outlived the stop"


def toml_str(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'

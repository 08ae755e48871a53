"""The whole flow on the emulator: VMs whose guest is our agent, and entrypoint.sh run as an
operator (or Cloud Run) runs it."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from gcp_emulator.demo import free_port
from tests.harness import REPO, TOKEN, EmulatorProcess

ZONE = "asia-northeast3-c"
REGION = "asia-northeast3"
PROJECT = "flow-project"
# the Compute calls that change a VM or its address (the claim's setLabels aside)
MUTATING = (
    "compute.instances.start",
    "compute.instances.stop",
    "compute.instances.addAccessConfig",
    "compute.instances.deleteAccessConfig",
)


# A guest script's first line, stamped as startup.sh stamps its own (UTC): the orchestrator takes
# the console's lines for this boot's from the first stamped after its start.
BOOTING = "guest script: booting"
STAMPED_FIRST_LINE = f'echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) {BOOTING}"'


def agent_guest_script(extra: str = "", restart: bool = False) -> str:
    """A startup-script that boots the agent straight from this checkout. Its first line is
    stamped as startup.sh's are (STAMPED_FIRST_LINE). With TLS_KEY and
    TLS_CERT in its environment it publishes the key's pin as startup.sh does (the guest
    attribute vm-job-agent/tls-pin) and serves HTTPS. With restart, the agent is started again
    a second after it exits, as systemd's Restart= does."""
    launch = "exec" if not restart else "while :; do"
    again = "" if not restart else "  sleep 1\n        done"
    return textwrap.dedent(f"""\
        #!/bin/bash
        {STAMPED_FIRST_LINE}
        {extra}
        tls=()
        if [[ -n ${{TLS_KEY:-}} ]]; then
          pin="sha256//$(openssl pkey -in "$TLS_KEY" -pubout -outform der |
            openssl dgst -sha256 -binary | base64)"
          curl -sS -X PUT --data "$pin" -H 'Metadata-Flavor: Google' \\
            "http://$GCE_METADATA_HOST/computeMetadata/v1/instance/guest-attributes/vm-job-agent/tls-pin"
          tls=(--ssl-keyfile "$TLS_KEY" --ssl-certfile "$TLS_CERT")
        fi
        cd {shlex.quote(str(REPO))}
        {launch} {shlex.quote(sys.executable)} -m uvicorn fastapi_app:app \\
          --http agent.connections:GuardedH11Protocol --backlog 256 \\
          --host "$AGENT_HOST" --port "$AGENT_PORT" --timeout-graceful-shutdown 3 "${{tls[@]}}"
        {again}
        """)


def make_tls_key(directory: Path) -> tuple[Path, Path, str]:
    """An EC P-256 key and self-signed certificate, as startup.sh makes them; and the key's pin
    in curl's --pinnedpubkey format."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "key.pem", directory / "cert.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-days", "30", "-subj", "/CN=test", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
    )
    return key, cert, pin_of(key)


def pin_of(key: Path) -> str:
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "der"],
        check=True,
        capture_output=True,
    ).stdout
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


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
    # each flow's addresses are its own (127.NET.x.y), so flows running at once never meet
    net: int = field(default_factory=lambda: random.randrange(1, 255))
    tls: bool = True  # the agent serves HTTPS and publishes its pin
    guest_attributes: bool = True  # the VMs' metadata enables guest attributes
    guest_env: dict[str, str] = field(default_factory=dict)  # more for every guest
    pin: str = ""  # the agent's pin, once config() made its key
    settings: str = ""  # more top-level emulator settings (TOML lines)
    runner: str = "guest-agent"  # the script runner's serial format, or "legacy"
    console_after_stop: str = "kept"  # the serial console at a start after a stop, or "cleared"
    private: bool = False  # the emulator in its private network (tests/chain.py)

    def static_ip(self, i: int = 0) -> str:
        """The address of ip-i."""
        return f"127.{self.net}.{60 + i}.{10 + i}"

    def internal_ip(self, i: int = 0) -> str:
        """vm-i's networkIP."""
        return f"127.{self.net}.100.{2 + i}"

    def runs_file(self, i: int = 0) -> Path:
        return self.tmp / f"vm-{i}" / "runs.log"

    def runs(self, i: int = 0) -> list[str]:
        f = self.runs_file(i)
        return f.read_text().splitlines() if f.exists() else []

    def config(self) -> str:
        parts = [f'project = "{PROJECT}"\nregion = "{REGION}"\nzone = "{ZONE}"\n{self.settings}\n']
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
                **self.guest_env,
            }
            if self.tls:
                key, cert, self.pin = make_tls_key(vm_dir / "tls")
                env |= {"TLS_KEY": str(key), "TLS_CERT": str(cert)}
            metadata = {"startup-script": self.script}
            if self.guest_attributes:
                metadata["enable-guest-attributes"] = "TRUE"
            metadata_toml = ", ".join(f"{toml_str(k)} = {toml_str(v)}" for k, v in metadata.items())
            env_toml = ", ".join(f"{k} = {toml_str(v)}" for k, v in env.items())
            parts.append(f"""
[[instances]]
name = "vm-{i}"
network_ip = "{self.internal_ip(i)}"
shutdown_grace = 5
script_runner = "{self.runner}"
console_after_stop = "{self.console_after_stop}"
env = {{ {env_toml} }}
metadata = {{ {metadata_toml} }}

[[addresses]]
name = "ip-{i}"
address = "{self.static_ip(i)}"
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
            "AGENT_TLS": "1" if self.tls else "0",
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v is not None}

    def entrypoint(
        self,
        *args: str,
        command: tuple[str, ...] = (),
        timeout: float = 180,
        wrap: tuple[str, ...] = (),
        **overrides: str,
    ) -> subprocess.CompletedProcess[str]:
        """entrypoint.sh as an operator runs it: WRAP bash ARGS entrypoint.sh COMMAND (WRAP: a
        command that runs it, such as faketime's)."""
        return subprocess.run(
            [*wrap, "bash", *args, str(REPO / "entrypoint.sh"), *command],
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
            start_new_session=True,  # so a test's clean-up reaches its gcloud and curl too
        )

    def assert_cleaned_up(self, i: int = 0, stopping_for: float = 0) -> None:
        """Nothing left: the VM TERMINATED (after a signal the cleanup asks for the stop and
        does not wait for it: then within stopping_for seconds), its address detached and
        free, its guest gone, its claim given back."""
        assert self.emu is not None
        inst = self.emu.instance(f"vm-{i}")
        assert inst["access_configs"] == [], f"vm-{i} still has {inst['access_configs']}"
        assert self.emu.address(f"ip-{i}")["status"] == "RESERVED"
        assert "vm-job-owner" not in inst["labels"], f"vm-{i}'s claim was not given back"
        if stopping_for and inst["status"] == "STOPPING":
            self.emu.wait_status(f"vm-{i}", "TERMINATED", timeout=stopping_for)
            inst = self.emu.instance(f"vm-{i}")
        assert inst["status"] == "TERMINATED", f"vm-{i} left {inst['status']}"
        assert inst["guest_pids"] == [], "guest processes outlived the stop"


def toml_str(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'

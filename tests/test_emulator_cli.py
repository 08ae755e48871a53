"""`python -m gcp_emulator serve|run` as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, pid_alive, wait_until
from tests.harness import reap

pytestmark = pytest.mark.e2e


def emulator_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gcp_emulator", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_run_gives_the_command_the_environment_and_its_exit_status(tmp_path):
    r = emulator_cli(
        "run",
        "--",
        "bash",
        "-c",
        'curl -sf "$GCP_EMULATOR_URL/_emulator/health" >/dev/null || exit 9; '
        'echo "$CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE $PROJECT_ID $INSTANCE"; '
        "exit 3",
    )
    assert r.returncode == 3, r.stderr
    override, project, instance = r.stdout.split()
    assert override.startswith("http://127.0.0.1:") and override.endswith("/compute/v1/")
    assert (project, instance) == ("demo-project", "vm-1")


def test_run_without_a_command_is_a_usage_error():
    r = emulator_cli("run")
    assert r.returncode == 2
    assert "run needs a command" in r.stderr


GUEST_IGNORING_TERM = """
[[instances]]
name = "vm-1"
status = "RUNNING"
metadata = { startup-script = "#!/bin/bash\\ntrap '' TERM\\nsleep 300 & wait" }
shutdown_grace = 1
"""


def start_run_cli(tmp_path, command: str) -> subprocess.Popen[str]:
    """`python -m gcp_emulator run -v` with one RUNNING VM whose guest ignores SIGTERM; its
    output goes to files, so no leftover process can hold a pipe the test waits on."""
    config = tmp_path / "emu.toml"
    config.write_text(GUEST_IGNORING_TERM)
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        argv = [sys.executable, "-m", "gcp_emulator", "run", "-v", "--config", str(config)]
        argv += ["--state-dir", str(tmp_path / "state"), "--", "bash", "-c", command]
        return subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
        )


def test_ctrl_c_during_run_stops_the_command_and_every_guest(tmp_path):
    url_file, pid_file = tmp_path / "url", tmp_path / "command.pid"
    proc = start_run_cli(
        tmp_path, f'echo $$ > {pid_file}; echo "$GCP_EMULATOR_URL" > {url_file}; sleep 300'
    )
    try:
        wait_until(lambda: url_file.exists() and url_file.read_text().strip(), 20, "the command")
        url = url_file.read_text().strip()

        def guest_pids() -> list[int]:
            return httpx.get(f"{url}/_emulator/state").json()["instances"][0]["guest_pids"]

        wait_until(lambda: len(guest_pids()) == 2, 20, "the guest's processes")
        pids = guest_pids()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        reap(proc)
    assert rc == 130, (tmp_path / "err").read_text()
    left = [p for p in [*pids, int(pid_file.read_text())] if pid_alive(p)]
    assert left == [], f"processes left behind after Ctrl-C: {left}"


def test_ctrl_c_while_the_command_is_being_started_still_stops_everything(tmp_path):
    """The race behind a flaky run: a Ctrl-C between the emulator being ready and the command
    running must reach the command (or keep it from starting), and the guests must stop."""
    pid_file = tmp_path / "command.pid"
    proc = start_run_cli(tmp_path, f"echo $$ > {pid_file}; exec sleep 300")
    err = tmp_path / "err"
    try:
        wait_until(lambda: "emulator ready" in err.read_text(), 20, "the emulator")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        reap(proc)
    assert rc == 130, err.read_text()
    if pid_file.exists():
        command = int(pid_file.read_text())
        wait_until(lambda: not pid_alive(command), 5, "the command to end")
    guest = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _is_guest_of(p, tmp_path)
    ]
    assert guest == [], f"guest processes left behind: {guest}"


def _is_guest_of(proc_dir: Path, tmp_path: Path) -> bool:
    """A live process started by this test's emulator (its guest's environment names it)."""
    try:
        environ = (proc_dir / "environ").read_bytes()
    except OSError:
        return False
    return (
        b"GCP_EMULATOR_GUEST=" in environ
        and str(tmp_path).encode() in environ
        and pid_alive(int(proc_dir.name))
    )


def test_serve_prints_exports_and_stops_on_sigterm(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_emulator", "serve", "--state-dir", str(state)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        exports = {}
        for line in proc.stdout:
            if not line.startswith("export "):
                break
            key, _, value = line.removeprefix("export ").strip().partition("=")
            exports[key] = value
        for key in (
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER",
            "CLOUDSDK_AUTH_ACCESS_TOKEN",
            "CLOUDSDK_CORE_PROJECT",
            "CLOUDSDK_CONFIG",
            "GCP_EMULATOR_URL",
        ):
            assert key in exports, f"serve did not print {key}"
        url = exports["GCP_EMULATOR_URL"]
        assert httpx.get(f"{url}/_emulator/health").json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        reap(proc)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("colour = 'blue'", "colour: unknown key"),
        (
            "[[instances]]\nname = 'vm'\nboot_delay = 'slow'",
            "instances[0].boot_delay: expected float",
        ),
        ("[[instances]]\nboot_delay = 1", "instances[0].name is required"),
        ("[[instances]]\nname = 'Bad_Name'", "instances[0].name: 'Bad_Name' is not a valid"),
        ("[[addresses]]\nname = 'ip'\naddress = '10.0.0.5'", "must be an IPv4 loopback address"),
        ("[[instances]]\nname = 'vm'\n[[instances]]\nname = 'vm'", "'vm' appears twice"),
        ("[[secrets]]\nname = 's'", "give exactly one of value or file"),
        ("project = ", "not valid TOML"),
        ("permissions = ['start the VM']", "'start the VM' is not a permission like"),
        ("permissions = 'compute.instances.get'", "permissions: expected list"),
        ("[[instances]]\nname = 'vm'\nmachine_type = 'huge'", "machine_type: not a machine type"),
        ("[[instances]]\nname = 'vm'\nmax_run_duration = -1", "max_run_duration: must be >= 0"),
        ("[[instances]]\nname = 'vm'\nconsole_after_stop = 'gone'", "must be kept or cleared"),
    ],
)
def test_bad_configuration_is_one_clear_line_and_exit_2(tmp_path, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    r = emulator_cli("run", "--config", str(config), "--", "true")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("gcp_emulator: configuration error: ")
    assert message in r.stderr


def test_missing_config_file_is_a_configuration_error(tmp_path):
    r = emulator_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert "cannot read" in r.stderr


def test_state_hook_reports_instances_addresses_and_secrets(tmp_path):
    r = emulator_cli("run", "--", "bash", "-c", 'curl -sf "$GCP_EMULATOR_URL/_emulator/state"')
    assert r.returncode == 0, r.stderr
    state = json.loads(r.stdout)
    assert [i["name"] for i in state["instances"]] == ["vm-1"]
    assert state["addresses"][0]["address"] == "127.0.0.2"
    assert os.path.isabs(state["instances"][0]["workdir"])


def test_a_serve_that_cannot_listen_leaves_no_temp_dir_behind(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        r = subprocess.run(
            [sys.executable, "-m", "gcp_emulator", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert list(tmp_path.glob("gcp-emulator-*")) == [], "an empty temp dir was left behind"


def test_help_speaks_to_a_user_not_of_the_code():
    r = emulator_cli("--help")
    assert r.returncode == 0
    assert "event loop" not in r.stdout, r.stdout
    assert "--keep-running" in r.stdout and "docs/emulator.md" in r.stdout

"""startup.sh as the VM's startup-script, booted by the emulator; and the one-command demo."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from gcp_emulator.config import dump_config
from gcp_emulator.demo import DEMO_JOB, Demo, demo_config, guest_access, make_disk, push_commit
from tests.conftest import REPO, free_port, wait_until
from tests.harness import EmulatorProcess, needs_gcloud

pytestmark = [pytest.mark.e2e, needs_gcloud]
ZONE = "asia-northeast3-c"
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def vm_base() -> Iterator[Path]:
    """A VM's disk lives outside pytest's tmp_path: as root, that is private to root, and the
    agent's user must reach the disk."""
    base = Path(tempfile.mkdtemp(prefix="vm-job-test-"))
    base.chmod(0o755)
    yield base / "vm"
    shutil.rmtree(base, ignore_errors=True)


class Booted:
    """A demo VM (startup.sh over a cloned disk) on an emulator process."""

    def __init__(self, demo: Demo, emu: EmulatorProcess) -> None:
        self.demo = demo
        self.emu = emu

    @property
    def app(self) -> Path:
        return self.demo.disk.app

    def serial(self) -> str:
        return (Path(self.emu.instance("demo-vm")["dir"]) / "serial-port-1.log").read_text()

    def entrypoint(self, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            **self.emu.env,
            **self.demo.entrypoint_env(**{"BOOT_TIMEOUT": "90", **extra}),
        }
        return subprocess.run(
            ["bash", str(REPO / "entrypoint.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    def assert_cleaned_up(self) -> None:
        inst = self.emu.instance("demo-vm")
        assert inst["status"] == "TERMINATED"
        assert inst["access_configs"] == []
        assert inst["guest_pids"] == []


@pytest.fixture
def boot(vm_base, tmp_path):
    emus: list[EmulatorProcess] = []

    def make(**kwargs) -> Booted:
        disk = kwargs.pop("disk", None) or make_disk(vm_base)
        demo = demo_config(disk, **kwargs)
        config = tmp_path / "emulator.toml"
        config.write_text(dump_config(demo.config))
        emus.append(EmulatorProcess(config, tmp_path / "emulator"))
        return Booted(demo, emus[-1])

    yield make
    for emu in emus:
        emu.stop()


def test_demo_command_runs_the_whole_flow_locally():
    r = subprocess.run(
        [sys.executable, "-m", "gcp_emulator", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert "demo job: hello from demo-vm, DRY_RUN=0, EXAMPLE=from-secret-manager" in r.stdout
    assert "demo job: done" in r.stdout
    assert "cleanup: demo-vm is TERMINATED" in r.stderr
    # the VM's boot is in the job's log: startup.sh's lines from the serial console, each once
    for step in ("boot 1/6 settings:", "boot 3/6 code:", "boot 5/6 dependencies:"):
        assert r.stderr.count(step) == 1, f"startup.sh's '{step}' line: {r.stderr}"
    # relayed with the VM's own time: the relay lags, the story stays in the VM's order
    assert re.search(r"\[vm \d\d:\d\d:\d\d\] startup\.sh INFO", r.stderr), r.stderr
    # the orchestrator's steps and the boot's are named apart, and read in time order
    starting = r.stderr.index("step 3/6: starting demo-vm")
    first_boot_line = re.search(r"\[vm [\d:]{8}\] startup\.sh INFO +boot 1/6 settings", r.stderr)
    assert first_boot_line, r.stderr
    assert starting < first_boot_line.start() < r.stderr.index("step 5/6: run")


def test_boot_writes_a_private_env_and_the_job_sees_its_values(boot):
    vm = boot(job='echo "EXAMPLE=$EXAMPLE uid=$(id -u)"')
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "EXAMPLE=from-secret-manager" in r.stdout, "the job sees .env's values"
    env_file = vm.app / ".env"
    info = env_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    owner = pwd.getpwuid(info.st_uid).pw_name
    assert owner == ("jobrunner" if AS_ROOT else pwd.getpwuid(os.getuid()).pw_name)
    assert not list(vm.app.glob(".env.*")), "no temp file is left behind"
    vm.assert_cleaned_up()


def test_test_mode_reaches_a_job_whose_command_reads_dry_run(boot):
    """The demo's JOB_COMMAND says `DRY_RUN=${DRY_RUN:-0}` in .env: the job's shell expands it
    when the job runs, so a job told it is in test mode sees DRY_RUN=1."""
    vm = boot()
    r = vm.entrypoint(MODE="test")
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "demo job: hello from demo-vm, DRY_RUN=1," in r.stdout, r.stdout
    assert "mode=test" in r.stderr


@pytest.mark.parametrize(("in_dotenv", "expected"), [(None, "900"), ("600", "600")])
def test_the_vms_agent_has_an_idle_shutdown_unless_dotenv_sets_its_own(boot, in_dotenv, expected):
    vm = boot(idle_shutdown=in_dotenv)
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert f"idle shutdown after {expected} s idle (IDLE_SHUTDOWN)" in vm.serial(), vm.serial()


def test_the_agent_does_not_run_as_root(boot):
    vm = boot(job='echo "job uid=$(id -u)"')
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("job uid="))
    assert line != "job uid=0", "the agent (and so the job) ran as root"
    if AS_ROOT:
        assert "as jobrunner" in vm.serial()


def test_a_commit_pushed_after_the_disk_was_made_is_live_after_the_next_boot(boot, vm_base):
    disk = make_disk(vm_base)
    push_commit(disk.origin, {"deploy-marker.txt": "deployed v2\n"}, "deploy v2")
    vm = boot(disk=disk, job="cat deploy-marker.txt")
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "deployed v2" in r.stdout
    assert "(origin/main)" in vm.serial()


MY_JOB = """import os
import sys

import dotenv  # one of the project's locked dependencies: not in the system's python

print(f"my_job: python {sys.prefix}, dotenv from {os.path.dirname(dotenv.__file__)}")
print(f"my_job: DRY_RUN={os.environ.get('DRY_RUN', '0')}, EXAMPLE={os.environ['EXAMPLE']}")
"""


def test_the_operators_own_package_runs_with_the_projects_python_and_dependencies(boot, vm_base):
    """docs/deploy.md's path for one's own job: a package committed and pushed to the repository
    the VM pulls, JOB_COMMAND='python -m my_job'. On the VM `python` is the project's .venv (the
    agent's PATH, systemd's, has none at all on Debian 12), so the job imports what uv locked."""
    disk = make_disk(vm_base)
    push_commit(
        disk.origin,
        {"my_job/__init__.py": "", "my_job/__main__.py": MY_JOB},
        "my trading job",
    )
    vm = boot(disk=disk, job="python -m my_job", token_secret="agent-token")
    r = vm.entrypoint(MODE="test")
    assert r.returncode == 0, r.stderr + vm.serial()
    venv = vm.app / ".venv"
    assert f"my_job: python {venv}, dotenv from {venv}/lib/" in r.stdout, r.stdout
    assert "my_job: DRY_RUN=1, EXAMPLE=from-secret-manager" in r.stdout
    vm.assert_cleaned_up()


def test_a_failed_fetch_keeps_the_code_and_still_boots(boot, vm_base):
    disk = make_disk(vm_base)
    disk.origin.rename(disk.origin.with_name("moved.git"))
    vm = boot(disk=disk)
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "fetching origin/main failed, keeping" in vm.serial()
    vm.assert_cleaned_up()


def test_the_vm_takes_the_agents_token_from_the_secret_the_job_reads(boot):
    """One token, one secret: the VM's token-secret names the secret the Cloud Run job reads
    (--set-secrets=AGENT_TOKEN=agent-token:latest), and .env holds no copy of it."""
    vm = boot(token_secret="agent-token")
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "demo job: done" in r.stdout
    env_lines = (vm.app / ".env").read_text().splitlines()
    assert [ln for ln in env_lines if ln.startswith("AGENT_TOKEN=")] == [
        f"AGENT_TOKEN={vm.demo.token}"
    ]
    assert "EXAMPLE=from-secret-manager" in env_lines, ".env's own settings are kept"
    assert "read from secret app-env, its token from secret agent-token" in vm.serial()
    assert vm.demo.token not in vm.serial() and vm.demo.token not in r.stderr
    vm.assert_cleaned_up()


def test_the_boot_runs_no_gcloud(boot, vm_base):
    """startup.sh reads its secrets (.env and the token) with the VM's token from the metadata
    server and Secret Manager's REST API: a gcloud first on the VM's PATH, which notes each call
    and fails, is never run, and the whole flow succeeds."""
    disk = make_disk(vm_base)
    trap = disk.base / "trap-bin"
    trap.mkdir()
    calls = disk.base / "gcloud-calls"
    (trap / "gcloud").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 1\n')
    (trap / "gcloud").chmod(0o755)
    path = guest_access(disk)["PATH"]
    vm = boot(disk=disk, token_secret="agent-token", env={"PATH": f"{trap}:{path}"})
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "demo job: done" in r.stdout
    assert "read from secret app-env, its token from secret agent-token" in vm.serial()
    assert "CRC32C checked" in vm.serial()
    assert not calls.exists(), f"startup.sh ran gcloud: {calls.read_text()}"


def test_a_stale_token_left_in_env_is_ignored_when_the_token_has_its_own_secret(boot):
    """A token rotated in its secret alone used to end every run in exit 6 (the VM kept .env's
    copy): with token-secret set, .env's AGENT_TOKEN= line is dropped, with a warning."""
    stale = f"AGENT_TOKEN=stale-token-from-before\nJOB_COMMAND={DEMO_JOB}\nEXAMPLE=kept\n"
    vm = boot(token_secret="agent-token", secret=stale)
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "AGENT_TOKEN= line is ignored: the token is secret agent-token's" in vm.serial()
    env_text = (vm.app / ".env").read_text()
    assert "stale-token-from-before" not in env_text
    assert env_text.count("AGENT_TOKEN=") == 1 and "EXAMPLE=kept" in env_text
    vm.assert_cleaned_up()


@pytest.mark.parametrize(
    ("token_secret", "reason"),
    [
        ("no-such-secret", "the agent's token: cannot read secret no-such-secret"),
        # the .env secret named by mistake: many lines, not a token
        ("app-env", "secret app-env does not hold a token: one line of 16 or more"),
    ],
)
def test_a_token_secret_that_holds_no_token_fails_the_boot_naming_it(boot, token_secret, reason):
    vm = boot(metadata={"token-secret": token_secret})
    r = vm.entrypoint(BOOT_TIMEOUT="120")
    assert r.returncode == 4, r.stderr
    assert f"demo-vm's boot failed: boot 4/6 .env: {reason}" in r.stderr, r.stderr
    assert "from-secret-manager" not in vm.serial(), "the secret's content is never logged"
    assert not (vm.app / ".env").exists() and not list(vm.app.glob(".env.*"))
    vm.assert_cleaned_up()


def test_a_failed_boot_is_reported_at_once_with_startup_shs_reason_and_cleaned_up(boot):
    vm = boot(metadata={"env-secret": "no-such-secret"})
    r = vm.entrypoint(BOOT_TIMEOUT="120")
    ended = time.time()
    assert r.returncode == 4, r.stderr
    assert "demo-vm's boot failed: boot 4/6 .env: cannot read secret no-such-secret" in r.stderr
    assert "[vm] boot failed: boot 4/6" in r.stderr, "the boot's state is in the job's log"
    assert re.search(r"\[vm [\d:]{8}\] startup\.sh ERROR", r.stderr), "and the console's lines"
    serial = vm.serial()
    failed = re.search(r"(\d{4}-\d\d-\d\dT[\d:.]+)Z \[ERROR\]: .*cannot read secret", serial)
    assert failed is not None, serial
    took = ended - datetime.fromisoformat(failed[1] + "+00:00").timestamp()
    assert took < 15, f"{took:.1f} s from startup.sh's failure line to the exit (goal 15 s)"
    assert "the agent is not started" in serial
    assert not (vm.app / ".env").exists()
    assert not list(vm.app.glob(".env.*"))
    vm.assert_cleaned_up()


def test_a_secret_without_a_token_is_refused(boot):
    vm = boot(secret="JOB_COMMAND=true\n")
    vm.emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    wait_until(lambda: vm.emu.instance("demo-vm")["guest_exit_status"] == 1, 60, "startup.sh")
    assert "has no AGENT_TOKEN= line; the agent is not started" in vm.serial()
    assert not (vm.app / ".env").exists()


def test_a_missing_checkout_is_a_clear_error(boot):
    vm = boot(metadata={"app-dir": "/nonexistent/app"})
    vm.emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    wait_until(lambda: vm.emu.instance("demo-vm")["guest_exit_status"] == 1, 60, "startup.sh")
    serial = vm.serial()
    assert "no checkout at APP_DIR=/nonexistent/app and no repo-url" in serial
    assert "--metadata=repo-url=" in serial, "the message says what to set"


def test_reboot_works_and_the_run_history_survives_it(boot):
    vm = boot()
    for execution in ("first", "second"):
        r = vm.entrypoint(CLOUD_RUN_EXECUTION=execution)
        assert r.returncode == 0, r.stderr + vm.serial()
    assert vm.serial().count("startup.sh INFO    starting") == 2
    with sqlite3.connect(vm.app / "state" / "runs.sqlite3") as db:
        rows = db.execute("SELECT idempotency_key, status FROM runs ORDER BY started_at").fetchall()
    assert rows == [("first/0", "succeeded"), ("second/0", "succeeded")]


def test_the_environment_overrides_metadata_which_overrides_defaults(boot):
    env_port = free_port()
    vm = boot(env={"AGENT_PORT": str(env_port)})  # the metadata says vm.demo.port
    assert env_port != vm.demo.port
    r = vm.entrypoint(AGENT_PORT=str(env_port))
    assert r.returncode == 0, r.stderr + vm.serial()
    serial = vm.serial()
    assert f"AGENT_PORT={env_port} (environment)" in serial, "environment beats metadata"
    assert f"APP_DIR={vm.app} (metadata app-dir)" in serial, "metadata beats the default"
    assert "GIT_REF=main (default)" in serial


def test_the_systemd_unit_is_valid(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    app = tmp_path / "app"
    (app / ".venv" / "bin").mkdir(parents=True)
    (app / ".venv" / "bin" / "uvicorn").write_text("#!/bin/sh\n")
    (app / ".venv" / "bin" / "uvicorn").chmod(0o755)
    script = (
        f"source {REPO / 'startup.sh'}; APP_USER=jobrunner APP_DIR={app} "
        f"STATE_DIR={app}/state AGENT_HOST=0.0.0.0 AGENT_PORT=8000 unit_text"
    )
    unit = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GCE_METADATA_HOST": "127.0.0.1:9"},
    ).stdout
    assert "Restart=on-failure" in unit and "User=jobrunner" in unit
    assert "IDLE_SHUTDOWN=900" in unit, "the VM's safety net is on in its unit"
    assert "--reload" not in unit
    unit_file = tmp_path / "vm-job-agent.service"
    unit_file.write_text(unit)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True, timeout=60
    )
    problems = [ln for ln in r.stderr.splitlines() if "vm-job-agent.service" in ln]
    assert problems == [], r.stderr


@pytest.mark.skipif(not AS_ROOT, reason="only root can be asked to run the agent as root")
def test_app_user_root_is_refused(tmp_path):
    env = {
        **os.environ,
        "APP_USER": "root",
        "APP_DIR": str(tmp_path),
        "GCE_METADATA_HOST": "127.0.0.1:9",
    }
    r = subprocess.run(
        ["bash", str(REPO / "startup.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "APP_USER must not be root" in r.stderr


def published_pin(vm: Booted) -> str:
    return vm.emu.instance("demo-vm")["guest_attributes"]["vm-job-agent/tls-pin"]


def test_the_agents_key_outlives_reboots_and_deploys_and_a_lost_one_is_made_again(boot, vm_base):
    disk = make_disk(vm_base)
    vm = boot(disk=disk)
    first = vm.entrypoint(CLOUD_RUN_EXECUTION="first")
    assert first.returncode == 0, first.stderr + vm.serial()
    pin = published_pin(vm)
    assert f"matches the pin demo-vm published ({pin}): verified" in first.stderr
    key = disk.tls / "agent-key.pem"
    assert not key.is_relative_to(disk.app), "the key lives outside the checkout"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pwd.getpwuid(key.stat().st_uid).pw_name == (
        "jobrunner" if AS_ROOT else pwd.getpwuid(os.getuid()).pw_name
    ), "the agent's user owns its key"

    push_commit(disk.origin, {"deploy-marker.txt": "v2\n"}, "deploy v2")
    second = vm.entrypoint(CLOUD_RUN_EXECUTION="second")
    assert second.returncode == 0, second.stderr + vm.serial()
    assert "(origin/main)" in vm.serial() and (disk.app / "deploy-marker.txt").exists()
    assert published_pin(vm) == pin, "a reboot and a deploy (git reset --hard) keep the key"

    key.unlink()
    third = vm.entrypoint(CLOUD_RUN_EXECUTION="third")
    assert third.returncode == 0, third.stderr + vm.serial()
    assert published_pin(vm) != pin, "a lost key is made again, with a new pin"
    assert vm.serial().count("tls: no key yet: made one") == 2


def test_without_guest_attributes_the_boot_says_what_to_set_and_nothing_runs(boot):
    vm = boot(metadata={"enable-guest-attributes": "FALSE"})
    r = vm.entrypoint(PIN_WAIT="3")
    assert r.returncode == 6, r.stderr + vm.serial()
    serial = vm.serial()
    assert "guest attributes are disabled on this VM" in serial
    assert "enable-guest-attributes=TRUE" in serial
    assert "boot 6/6 agent: starting" in serial, "the agent still starts"
    assert "enable-guest-attributes=TRUE" in r.stderr
    with sqlite3.connect(vm.app / "state" / "runs.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,), "a run started"
    vm.assert_cleaned_up()


# -- a stock Debian image and the real script runner -------------------------------------------


def serial_lines(vm: Booted, marker: str) -> list[str]:
    """The console's lines that hold marker and came through the script runner (the boot
    watchdog writes to the console itself, past the runner)."""
    return [ln for ln in vm.serial().splitlines() if marker in ln and "script_runner" in ln]


def test_info_goes_to_stdout_and_only_warnings_and_errors_to_stderr(boot):
    vm = boot()
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    watchdog = [ln for ln in vm.serial().splitlines() if "boot watchdog: the agent answers" in ln]
    assert watchdog and "script_runner" not in watchdog[0], "the watchdog writes to the console"
    info = serial_lines(vm, "startup.sh INFO")
    assert len(info) >= 6, vm.serial()
    assert all("[INFO]: " in ln for ln in info), "an INFO line reached stderr (ERROR in the log)"
    errors = [ln for ln in serial_lines(vm, "[ERROR]: ") if "startup.sh" in ln]
    assert errors == [], "a healthy boot logs no startup.sh line as ERROR"


def test_a_stock_image_without_git_gets_it_from_apt_without_recommends(boot):
    vm = boot(missing_commands=["git"])
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "git is not installed: installing git with apt-get" in vm.serial()
    apt_log = (Path(vm.emu.instance("demo-vm")["dir"]) / "apt-get.log").read_text()
    install = [ln for ln in apt_log.splitlines() if "install" in ln]
    assert install == ["install -y -qq --no-install-recommends git"], apt_log


def test_the_first_boot_clones_repo_url_when_there_is_no_checkout(boot, vm_base):
    disk = make_disk(vm_base)
    shutil.rmtree(disk.app)
    vm = boot(disk=disk, metadata={"repo-url": str(disk.origin)}, job="echo cloned and ran")
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "cloned and ran" in r.stdout
    assert f"first boot: cloned {disk.origin} (main) into {disk.app}" in vm.serial()
    git_config = (disk.app / ".git" / "config").read_text()
    assert f"url = {disk.origin}" in git_config, "later boots fetch from repo-url"


def test_a_failed_boot_with_nobody_watching_powers_the_vm_off(boot):
    vm = boot(metadata={"env-secret": "no-such-secret", "boot-watchdog": "3"})
    vm.emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    vm.emu.wait_status("demo-vm", "TERMINATED", timeout=60)
    serial = vm.serial()
    assert "boot watchdog: the VM powers itself off at" in serial, "the log says when"
    assert "cannot read secret no-such-secret" in serial
    assert "boot watchdog: the agent did not answer within 3s" in serial
    assert any(e.get("event") == "guest_poweroff" for e in vm.emu.journal())


DEPLOY_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
)
FAKE_SSH = """#!/bin/bash
# ssh for the test: checks that git's ssh was given the deploy key (and only it), then runs
# git's remote command here, as a git server would.
key=""
while (($#)); do
  case $1 in -i) key=$2; shift 2 ;; -o | -p) shift 2 ;; -*) shift ;; *) break ;; esac
done
shift  # user@host
if ! cmp -s "$key" {expected}; then
  echo "fake ssh: -i '$key' is not the deploy key" >&2
  exit 255
fi
exec bash -c "$*"
"""


def test_a_private_repository_is_cloned_with_the_deploy_key_from_secret_manager(boot, vm_base):
    disk = make_disk(vm_base)
    shutil.rmtree(disk.app)
    expected = disk.base / "expected-key"
    expected.write_text(DEPLOY_KEY)
    expected.chmod(0o644)
    fake = disk.base / "fake-ssh"
    fake.mkdir()
    (fake / "ssh").write_text(FAKE_SSH.format(expected=expected))
    (fake / "ssh").chmod(0o755)
    vm = boot(
        disk=disk,
        metadata={
            "repo-url": f"ssh://git@github.invalid{disk.origin}",
            "repo-key-secret": "repo-key",
        },
        env={"PATH": f"{fake}:{guest_access(disk)['PATH']}"},
        job="echo private code ran",
    )
    vm.emu.http.post("/_emulator/secrets/repo-key", json={"value": DEPLOY_KEY}).raise_for_status()
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "private code ran" in r.stdout
    assert "deploy key from secret repo-key" in vm.serial()
    key = disk.tls / "deploy-key"
    assert key.read_text() == DEPLOY_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not key.is_relative_to(disk.app), "the key stays out of the checkout"


def test_demo_keep_running_leaves_a_vm_for_status_and_logs_until_ctrl_c(vm_base, tmp_path):
    env = {**os.environ, "TMPDIR": str(vm_base.parent)}  # the demo's disk, reachable as root
    env.pop("AGENT_TOKEN", None)
    err = tmp_path / "demo.err"
    with err.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_emulator", "demo", "--keep-running"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "Ctrl-C here stops" in err.read_text(), 240, "the demo to stay up")
        text = err.read_text()
        env_file = Path(re.search(r"source (\S+/env\.sh)", text).group(1))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "it holds the token"
        token = re.search(r"AGENT_TOKEN=(\S+)", env_file.read_text()).group(1)
        assert token not in text, "the token was printed"
        shell = f"source {env_file} && cd {REPO} && ./entrypoint.sh status && ./entrypoint.sh logs"
        r = subprocess.run(
            ["bash", "-c", shell],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stderr
        assert "instance  demo-vm in asia-northeast3-c: RUNNING" in r.stdout, r.stdout
        assert "claim     held: vm-job-owner=" in r.stdout, "the kept VM is claimed"
        assert "  succeeded   exit 0" in r.stdout
        assert "demo job: done" in r.stdout, "logs prints the demo job's output"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
        assert not env_file.exists(), "the demo's files are gone after Ctrl-C"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_failure_no_check_caught_is_published_and_reported_at_once(boot, vm_base):
    """uv sync refusing a broken lock fails where startup.sh has no check of its own: set -e
    ends it, and the ERR trap still publishes `failed: <step>: <reason>`. Under the older runner
    (its failure line is `startup-script exit status N`, and only once every holder of its
    pipe, the boot watchdog too, lets go) nothing else would tell the orchestrator."""
    disk = make_disk(vm_base)
    push_commit(disk.origin, {"uv.lock": "this is not a lock file\n"}, "a broken lock")
    vm = boot(disk=disk, script_runner="legacy")
    t0 = time.monotonic()
    r = vm.entrypoint(BOOT_TIMEOUT="120")
    took = time.monotonic() - t0
    assert r.returncode == 4, r.stderr
    assert "demo-vm's boot failed: boot 5/6 dependencies: '" in r.stderr, r.stderr
    assert "failed with exit status 2 (startup.sh line" in r.stderr, r.stderr
    assert "called from sync_deps" in r.stderr, "the step's function is named"
    assert "[vm] error: Failed to parse `uv.lock`" in r.stderr, "and uv's own words relayed"
    assert took < 60, f"the failed boot took {took:.0f} s to report (BOOT_TIMEOUT=120)"
    vm.assert_cleaned_up()


def test_a_guest_attribute_write_met_by_a_503_is_tried_again(boot):
    """The metadata server answers 503 for a moment (maintenance): the boot's first state and
    the key's pin still get through, and the orchestrator verifies the agent."""
    vm = boot()
    vm.emu.fault("metadata.guestAttributes.put", status=503, count=2)
    r = vm.entrypoint()
    assert r.returncode == 0, r.stderr + vm.serial()
    assert "the agent's key matches the pin" in r.stderr
    published = [
        c
        for c in vm.emu.calls("metadata.guestAttributes.put")
        if c["path"].endswith("/vm-job-agent/boot") and c["status"] == 200
    ]
    # every state got through (1/6 settings, 2/6 the steps side by side, 6/6 agent, ready), not
    # turned off after the 503s: what the orchestrator's reads every 2 s happen to catch of
    # them depends on the machine's load
    assert len(published) >= 4, f"the boot's states were turned off: {published}"


def test_credentials_in_repo_url_never_reach_the_console(boot, vm_base):
    """A repo-url with a token in it (https://USER:TOKEN@host/…): the console, which Cloud
    Logging keeps, shows it as ***, in the settings line and in the clone's failure alike."""
    token = "ghp_s3cretT0kenThatMustNotLeak"
    vm = boot(
        metadata={
            "app-dir": str(vm_base / "fresh-checkout"),
            "repo-url": f"https://trader:{token}@127.0.0.1:9/trading.git",
        }
    )
    vm.emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    wait_until(lambda: "failed:" in vm.emu.instance("demo-vm")["guest_attributes"].get(
        "vm-job-agent/boot", ""), 60, "the failed clone")  # fmt: skip
    serial = vm.serial()
    assert "https://***@127.0.0.1:9/trading.git" in serial, serial
    assert token not in serial, "the token reached the serial console"
    assert token not in str(vm.emu.instance("demo-vm")["guest_attributes"])


def test_the_boot_watchdog_is_armed_before_anything_can_fail(boot):
    """A setting that stops the boot at once (AGENT_TLS=2): the watchdog is armed already, and
    powers the VM off, where it used to be armed after the settings were read."""
    vm = boot(metadata={"agent-tls": "2", "boot-watchdog": "3"})
    vm.emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    vm.emu.wait_status("demo-vm", "TERMINATED", timeout=60)
    serial = vm.serial()
    assert "AGENT_TLS must be 0 or 1, not '2'" in serial
    assert serial.index("boot watchdog: the VM powers itself off") < serial.index("AGENT_TLS must")
    assert any(e.get("event") == "guest_poweroff" for e in vm.emu.journal())


def test_the_boot_watchdog_says_it_powers_off_on_the_console_as_it_is_then(tmp_path):
    """On a real VM the serial getty starts after the watchdog and hangs the console up, which
    voids every descriptor opened on it before: the watchdog, holding one from its start, powered
    the VM off without a word. Here the console is replaced once the watchdog runs: its last line
    and the poweroff's own must reach the console as it is when they are written."""
    console = tmp_path / "ttyS0"
    console.write_text("")
    started = tmp_path / "curl-called"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f"#!/bin/sh\ntouch {started}\nexit 7\n")
    (bin_dir / "poweroff").write_text("#!/bin/sh\necho 'System is powering off.'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SERIAL_CONSOLE": str(console),
        "BOOT_WATCHDOG": "3",
        "AGENT_PORT": "9",
        "AGENT_TLS": "0",
    }
    with subprocess.Popen(
        ["bash", "-c", 'source "$1"; watchdog', "bash", str(REPO / "startup.sh")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as proc:  # fmt: skip
        wait_until(started.exists, 20, "the watchdog's first look at the agent")
        console.rename(tmp_path / "ttyS0.hung-up")  # what was opened before is gone
        console.write_text("")
        out, _ = proc.communicate(timeout=30)
    text = console.read_text()
    assert "boot watchdog: the agent did not answer within 3s" in text, text
    assert "System is powering off." in text, "the poweroff's own output is on the console"
    assert out == b"", "nothing goes to the script runner's pipes"


def test_the_agents_unit_stops_the_agent_alone_and_lets_it_end_the_job(tmp_path):
    """systemd's default KillMode=control-group would send the job SIGTERM beside the agent's
    own: the job's handler would run twice on a VM's stop."""
    r = subprocess.run(
        ["bash", "-c", 'source "$1"; APP_USER=jobrunner APP_DIR=/opt/app STATE_DIR=/opt/app/state '
         "AGENT_HOST=0.0.0.0 AGENT_PORT=8000 TLS_ARGS=(); unit_text", "bash",
         str(REPO / "startup.sh")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "\nKillMode=mixed\n" in r.stdout
    grace = int(re.search(r"^TimeoutStopSec=(\d+)$", r.stdout, re.MULTILINE)[1])
    assert grace >= 5 + 5 + 5, "uvicorn's graceful stop, KILL_GRACE and a margin"

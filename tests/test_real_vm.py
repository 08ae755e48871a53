"""The real-VM tier: an instance whose guest is a Debian 12 VM under QEMU
(gcp_emulator/guests/qemu.py, its image from gcp_emulator/guests/vm_image.py), with Debian's
google-guest-agent and
its script runner, systemd and rsyslog. Slow (minutes under TCG): run with -m real_vm; .ci/run
runs it after the other tiers. Skipped, with the reason, where QEMU, debootstrap or root are
missing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gcp_emulator.config import dump_config
from gcp_emulator.demo import DEMO_JOB, Demo, GitServer, demo_config, make_disk, push_commit
from gcp_emulator.guests.qemu import qemu_missing
from gcp_emulator.guests.vm_image import build
from tests.conftest import REPO, wait_until
from tests.harness import EmulatorProcess, needs_gcloud

pytestmark = [
    pytest.mark.e2e,  # never in the fast tier (-m "not e2e")
    pytest.mark.real_vm,
    pytest.mark.timeout(900),
    pytest.mark.skipif(qemu_missing() is not None, reason=f"no real VMs here: {qemu_missing()}"),
]

ZONE = "us-central1-a"
SCRIPT = r"""#!/bin/bash
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) real-vm: to stdout"
echo "real-vm: to stderr" >&2
echo "real-vm: gcloud: $(command -v gcloud || echo none)"
md=http://metadata.google.internal/computeMetadata/v1
token=$(curl -sf -H 'Metadata-Flavor: Google' "$md/instance/service-accounts/default/token" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
project=$(curl -sf -H 'Metadata-Flavor: Google' "$md/project/project-id")
sm=${CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER%/}
decode='import base64, json, sys; p = json.load(sys.stdin)["payload"]
print(base64.b64decode(p["data"]).decode())'
pin=$(curl -sf -H "Authorization: Bearer $token" \
  "$sm/v1/projects/$project/secrets/vm-secret/versions/latest:access" | python3 -c "$decode") ||
  pin="reading it failed: $?"
echo "real-vm: the secret is $pin"
curl -sf -X PUT --data "$pin" -H 'Metadata-Flavor: Google' \
  http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/vm-job-agent/probe
echo "real-vm: powering off"
poweroff
"""


@pytest.fixture(scope="module")
def image():
    return build()


@needs_gcloud
def test_a_real_vm_runs_its_startup_script_with_googles_runner_and_powers_itself_off(
    emulator, image
):
    """Google's script runner (Debian's 20211116) fetches the startup-script from the metadata
    server at 169.254.169.254 and runs it; its lines reach the serial console through rsyslog;
    the VM's token from the metadata server reads a secret from the emulator's Secret Manager
    (through the relay, the endpoint the image gives the script runner's environment), with no
    gcloud on the image; a guest attribute PUT lands; `poweroff` inside ends the VM:
    TERMINATED."""
    config = f"""project = "real-vm-project"
zone = "{ZONE}"
guest = "qemu"
[[instances]]
name = "vm-real"
network_ip = "127.0.0.9"
metadata = {{ enable-guest-attributes = "TRUE", startup-script = '''{SCRIPT}''' }}
[[secrets]]
name = "vm-secret"
value = "s3cret-from-secret-manager"
"""
    emu = emulator(config)
    started = time.monotonic()
    emu.gcloud("compute", "instances", "start", "vm-real", f"--zone={ZONE}")

    def attributes() -> dict[str, str]:
        return emu.instance("vm-real")["guest_attributes"]

    wait_until(lambda: "vm-job-agent/probe" in attributes(), 600, "the script's guest attribute")
    assert attributes()["vm-job-agent/probe"] == "s3cret-from-secret-manager"
    emu.wait_status("vm-real", "TERMINATED", timeout=300)
    took = time.monotonic() - started
    serial = (emu.state_dir / "instances" / ZONE / "vm-real" / "serial-port-1.log").read_text()
    assert "real-vm: gcloud: none" in serial, "the image has no Cloud SDK"
    for line in ("real-vm: to stdout", "real-vm: to stderr", "real-vm: powering off"):
        assert "google_metadata_script_runner[" in serial and line in serial, line
    assert "Linux version" in serial, "the kernel's console is the serial port"
    assert "google_guest_agent[" in serial and "GCE Agent Started" in serial
    # the guest agent's own attribute, written after its OS Login setup, did not come in one
    # run of three (docs/emulator.md, "Real VMs"): said, not asserted
    sshable = "guest-agent/sshable" in emu.instance("vm-real")["guest_attributes"]
    events = [e.get("event") for e in emu.journal() if e["kind"] == "event"]
    assert "guest_poweroff" in events, "the VM ended by its own poweroff"
    print(f"real VM: start to TERMINATED by its own poweroff in {took:.0f}s; sshable: {sshable}")


# -- the whole flow on a real VM ---------------------------------------------------------------

# the demo's job, and what the checkout holds (a deploy between two runs changes it)
FLOW_JOB = DEMO_JOB + '; echo "deployed: $(cat DEPLOYED.txt 2>/dev/null || echo nothing)"'
BOOT_TIMEOUT = "900"  # a first boot installs git, pip and uv and syncs under TCG: 5 to 7 min
PIN_RE = re.compile(r"the agent's key matches the pin demo-vm published \((sha256//[^)]+)\)")


class RealDemo:
    """The demo VM (startup.sh, its repo-url a git daemon on this host) as a real VM, on an
    emulator process."""

    def __init__(self, demo: Demo, emu: EmulatorProcess) -> None:
        self.demo = demo
        self.emu = emu

    @property
    def dir(self) -> Path:
        return Path(self.emu.instance("demo-vm")["dir"])

    def serial(self) -> str:
        return (self.dir / "serial-port-1.log").read_text(errors="replace")

    def arrival(self, needle: str, after: float = 0) -> float | None:
        """When the first console line holding needle, arrived after the time `after`, came."""
        data = (self.dir / "serial-port-1.log").read_bytes()
        for row in (self.dir / "serial-port-1.times").read_text().splitlines():
            when, offset = row.split()
            line = data[int(offset) : data.find(b"\n", int(offset))]
            if float(when) > after and needle.encode() in line:
                return float(when)
        return None

    def entrypoint_env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.emu.env,
            **self.demo.entrypoint_env(**{"BOOT_TIMEOUT": BOOT_TIMEOUT, **extra}),
        }

    def entrypoint(self, **extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """entrypoint.sh's result and how long it took."""
        t0 = time.monotonic()
        r = subprocess.run(
            ["bash", str(REPO / "entrypoint.sh")],
            env=self.entrypoint_env(**extra),
            capture_output=True,
            text=True,
            timeout=int(BOOT_TIMEOUT) + 600,
            stdin=subprocess.DEVNULL,
        )
        return r, time.monotonic() - t0

    def assert_cleaned_up(self) -> None:
        inst = self.emu.instance("demo-vm")
        assert inst["status"] == "TERMINATED", inst["status"]
        assert inst["access_configs"] == []
        assert "vm-job-owner" not in inst["labels"]


@pytest.fixture
def real_demo(image, tmp_path):
    """make(**demo_config arguments) -> a RealDemo; its git daemon and emulator stopped after."""
    base = Path(tempfile.mkdtemp(prefix="vm-job-real-"))
    base.chmod(0o755)  # make_disk's check: as root, another user could have to reach it
    made: list[EmulatorProcess] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)

        def make(**kwargs) -> RealDemo:
            disk = make_disk(base / "vm")
            git = stack.enter_context(GitServer(disk.base))
            demo = demo_config(disk, repo_url=git.url(disk.origin), **kwargs)
            config = tmp_path / "emulator.toml"
            config.write_text(dump_config(demo.config))
            made.append(EmulatorProcess(config, tmp_path / "emulator"))
            stack.callback(made[-1].stop)
            return RealDemo(demo, made[-1])

        yield make


@needs_gcloud
@pytest.mark.timeout(2400)
def test_the_whole_flow_on_a_real_vm_then_a_warm_run_then_its_idle_shutdown(real_demo):
    """entrypoint.sh against a Debian 12 VM: Google's runner runs startup.sh, which installs
    git, pip and uv as on a stock image, clones the repo-url, publishes its pin with a real
    metadata-server PUT and starts the agent under systemd; the orchestrator verifies the pin
    over the forwarded port, runs the job, relays the boot as [vm] lines and stops the VM. A
    second run boots the same disk: the key kept (same pin), the deploy in between fetched,
    nothing installed again, faster. Left running (KEEP_VM=1), the agent's idle shutdown powers
    the VM off through sudo -n /usr/sbin/poweroff."""
    vm = real_demo(job=FLOW_JOB, idle_shutdown="45")

    first, first_took = vm.entrypoint()
    assert first.returncode == 0, first.stderr
    assert "demo job: hello from demo-vm, DRY_RUN=0, EXAMPLE=from-secret-manager" in first.stdout
    assert "deployed: nothing" in first.stdout
    for line in (
        "[vm",  # the boot's lines, relayed from the console
        "startup.sh INFO    git is not installed: installing git with apt-get",
        "boot 3/6 code: first boot: cloned git://169.254.169.1:",
        "boot 5/6 dependencies: uv sync --frozen",
        "cleanup: demo-vm is TERMINATED",
    ):
        assert line in first.stderr, line
    pin = PIN_RE.search(first.stderr)
    assert pin is not None, first.stderr
    vm.assert_cleaned_up()
    serial = vm.serial()
    assert "google_metadata_script_runner[" in serial and "startup-script exit status 0" in serial
    assert "Started vm-job-agent.service" in serial or "vm-job-agent" in serial

    push_commit(vm.demo.disk.origin, {"DEPLOYED.txt": "v2\n"}, "deploy v2")
    second, second_took = vm.entrypoint(KEEP_VM="1")
    assert second.returncode == 0, second.stderr
    assert "deployed: v2" in second.stdout, "the warm boot did not fetch the deploy"
    again = PIN_RE.search(second.stderr)
    assert again is not None and again.group(1) == pin.group(1), "the key was not kept"
    assert "is not installed" not in second.stderr, "the warm boot installed something again"
    assert second_took < first_took, f"warm {second_took:.0f} s, first {first_took:.0f} s"
    assert vm.emu.instance("demo-vm")["status"] == "RUNNING", "KEEP_VM=1 left it up"

    kept = time.monotonic()
    vm.emu.wait_status("demo-vm", "TERMINATED", timeout=45 + 120)
    # the journal's events but its status changes: the guest's own
    events = [e["event"] for e in vm.emu.journal() if e.get("event") not in (None, "status")]
    assert events[-2:] == ["guest_poweroff", "guest_stop"], events
    assert "IDLE SHUTDOWN: no run and no authenticated request" in vm.serial()
    print(
        f"real VM: first run {first_took:.0f} s, warm run {second_took:.0f} s, idle shutdown "
        f"{time.monotonic() - kept:.0f} s after the warm run (IDLE_SHUTDOWN=45)"
    )


@needs_gcloud
@pytest.mark.timeout(2400)
def test_a_failed_real_boot_powers_itself_off_and_is_exit_4_within_15_s_under_the_orchestrator(
    real_demo,
):
    """The .env secret missing. Started by hand with nobody watching, the VM fails its boot and
    its boot watchdog powers it off (TERMINATED, its line on the console). Started again by the
    orchestrator, the failure is exit 4 with startup.sh's reason, within 15 s of startup.sh's
    ERROR line reaching the console."""
    vm = real_demo(metadata={"env-secret": "no-such-secret", "boot-watchdog": "300"})
    started = time.time()
    r = vm.emu.gcloud("compute", "instances", "start", "demo-vm", f"--zone={vm.demo.config.zone}")
    assert r.returncode == 0, r.stderr
    vm.emu.wait_status("demo-vm", "RUNNING", timeout=60)
    vm.emu.wait_status("demo-vm", "TERMINATED", timeout=300 + 300)
    failed = vm.arrival("startup.sh ERROR", after=started)
    assert failed is not None, "startup.sh logged no ERROR: " + vm.serial()[-3000:]
    assert "boot 4/6 .env" in vm.serial() and "no-such-secret" in vm.serial()
    watchdog = vm.arrival("boot watchdog: the agent did not answer within 300s", after=failed)
    assert watchdog is not None, "the boot watchdog did not say it powers off"
    events = [e.get("event") for e in vm.emu.journal() if e["kind"] == "event"]
    assert "guest_poweroff" in events, "the VM did not power itself off"

    second = time.time()
    detected = None
    err = []
    with subprocess.Popen(
        ["bash", str(REPO / "entrypoint.sh")],
        env=vm.entrypoint_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # each line as it comes: when the failure was seen
            err.append(line)
            if detected is None and "boot failed" in line:
                detected = time.time()
        proc.wait(120)
    err_text = "".join(err)
    assert proc.returncode == 4, err_text
    assert "no-such-secret" in err_text, "startup.sh's reason is not in the orchestrator's log"
    failed = vm.arrival("startup.sh ERROR", after=second)
    assert failed is not None and detected is not None, err_text
    assert detected - failed < 15, f"the failure took {detected - failed:.1f} s to be seen"
    vm.assert_cleaned_up()
    print(f"real VM: failed boot seen {detected - failed:.1f} s after startup.sh's ERROR line")

"""The emulated VM's inside: startup script, metadata server, poweroff, serial output."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import pid_alive, wait_until
from tests.harness import needs_gcloud

pytestmark = pytest.mark.e2e

ZONE = "us-central1-a"
Z = f"--zone={ZONE}"


def vm_config(*names: str, script: str, **extra: str) -> str:
    """A configuration with one instance per name, each running the same startup script."""
    blocks = []
    for name in names:
        attrs = ", ".join([f'role = "{name}-role"'] + [f'{k} = "{v}"' for k, v in extra.items()])
        blocks.append(f"""
[[instances]]
name = "{name}"
metadata = {{ {attrs}, startup-script = '''{script}''' }}
""")
    return 'project = "guest-project"\nzone = "us-central1-a"\n' + "".join(blocks)


MD = 'curl -sf -H "Metadata-Flavor: Google" "http://$GCE_METADATA_HOST/computeMetadata/v1'


def test_startup_script_runs_on_every_start_and_only_once_running(emulator, tmp_path):
    boots = tmp_path / "boots"
    status_url = f"$GCP_EMULATOR_URL/compute/v1/projects/guest-project/zones/{ZONE}/instances/vm-1"
    script = f"""#!/bin/bash
GCP_EMULATOR_URL="http://${{GCE_METADATA_IP}}"
status=$(curl -s -H 'Authorization: Bearer x' "{status_url}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
echo "boot status=$status" >> {boots}
"""  # noqa: E501
    emu = emulator(vm_config("vm-1", script=script))
    assert not boots.exists(), "nothing runs before the first start"
    for n in (1, 2):
        emu.set_instance(ZONE, "vm-1", status="RUNNING")
        wait_until(
            lambda n=n: boots.exists() and len(boots.read_text().splitlines()) == n, 20, f"boot {n}"
        )
        emu.set_instance(ZONE, "vm-1", status="TERMINATED")
    assert boots.read_text().splitlines() == ["boot status=RUNNING"] * 2
    events = [e for e in emu.journal() if e["kind"] == "event"]
    first_running = next(i for i, e in enumerate(events) if e.get("status") == "RUNNING")
    first_guest = next(i for i, e in enumerate(events) if e.get("event") == "guest_start")
    assert first_running < first_guest, "the script started before the VM was RUNNING"


def test_boot_delay_holds_the_script_back_after_running(emulator, tmp_path):
    mark = tmp_path / "started"
    emu = emulator(vm_config("vm-1", script=f"#!/bin/bash\ndate +%s.%N > {mark}\n"))
    emu.set_instance(ZONE, "vm-1", boot_delay=1.0)
    t0 = time.time()
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    # the shell creates the file before date writes to it: wait for the line, not the file
    wait_until(lambda: mark.exists() and mark.read_text().endswith("\n"), 20, "the script")
    assert float(mark.read_text()) - t0 >= 1.0


def test_stop_leaves_no_guest_process_behind(emulator, tmp_path):
    pids = tmp_path / "pids"
    script = f"""#!/bin/bash
sleep 300 & echo $! >> {pids}
setsid bash -c 'trap "" TERM; echo $$ >> {pids}; exec sleep 300' &
trap '' TERM
echo $$ >> {pids}
wait
"""
    emu = emulator(vm_config("vm-1", script=script))
    emu.set_instance(ZONE, "vm-1", shutdown_grace=1.0)
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 3, 20, "3 processes")
    seen = [int(p) for p in pids.read_text().split()]
    assert all(pid_alive(p) for p in seen)
    assert sorted(emu.instance("vm-1")["guest_pids"]) == sorted(seen)
    emu.set_instance(ZONE, "vm-1", status="TERMINATED")
    alive = [p for p in seen if pid_alive(p)]
    assert alive == [], f"guest processes outlived the stop: {alive}"


@needs_gcloud
@needs_gcloud
def test_a_stopping_vm_is_not_brought_back_to_running(emulator, tmp_path):
    """The RUNNING hook (a repair's end, a boot at once) refuses a VM whose stop has begun: a
    guest booted then would run on under the TERMINATED status the stop ends in."""
    script = "#!/bin/bash\ntrap '' TERM\nsleep 300 & wait\n"
    emu = emulator(vm_config("vm-1", script=script))
    emu.set_instance(ZONE, "vm-1", shutdown_grace=3.0)
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: len(emu.instance("vm-1")["guest_pids"]) == 2, 20, "the script")
    assert emu.gcloud("compute", "instances", "stop", "vm-1", Z, "--async").returncode == 0
    emu.wait_status("vm-1", "STOPPING", timeout=5)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        emu.set_instance(ZONE, "vm-1", status="RUNNING")
    assert refused.value.response.status_code == 409
    emu.wait_status("vm-1", "TERMINATED", timeout=20)
    assert emu.instance("vm-1")["guest_pids"] == [], "a guest runs on under TERMINATED"


def test_script_output_is_on_the_serial_port_in_the_newer_runners_format(emulator):
    script = "#!/bin/bash\necho 'hello from the guest'\necho 'oops' >&2\nexit 3\n"
    emu = emulator(vm_config("vm-1", script=script))
    assert emu.gcloud("compute", "instances", "start", "vm-1", Z).returncode == 0
    wait_until(lambda: emu.instance("vm-1")["guest_exit_status"] == 3, 20, "the script to end")
    r = emu.gcloud("compute", "instances", "get-serial-port-output", "vm-1", Z)
    assert r.returncode == 0, r.stderr
    key = 'Metadata key("startup-script"), command("/bin/bash"): '
    lines = r.stdout.splitlines()
    assert any(f"[INFO]: {key}hello from the guest" in ln for ln in lines), r.stdout
    assert any(f"[ERROR]: {key}oops" in ln for ln in lines), "stderr is logged as ERROR"
    wait_until(lambda: "Finished running startup scripts" in serial_of(emu), 10, "the runner")
    assert '[WARNING]: Script "startup-script" failed with error: exit status 3' in serial_of(emu)


def test_the_legacy_runner_merges_the_streams_as_startup_script_lines(emulator, tmp_path):
    config = vm_config("vm-1", script="#!/bin/bash\necho out\necho err >&2\nexit 3\n")
    emu = emulator(config.replace('name = "vm-1"', 'name = "vm-1"\nscript_runner = "legacy"'))
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: "Finished running startup scripts." in serial_of(emu), 20, "the script")
    serial = serial_of(emu)
    assert "google_metadata_script_runner: startup-script: out" in serial
    assert "google_metadata_script_runner: startup-script: err" in serial
    assert 'Script "startup-script" failed with error: exit status 3' in serial


def test_the_20240802_runner_puts_each_line_on_the_console_twice(emulator):
    config = vm_config("vm-1", script="#!/bin/bash\necho out\nexit 3\n")
    runner = 'name = "vm-1"\nscript_runner = "legacy-20240802"'
    emu = emulator(config.replace('name = "vm-1"', runner))
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: serial_of(emu).count("Finished running startup scripts.") == 2, 20, "end")
    serial = serial_of(emu)
    assert serial.count("startup-script: out\n") == 2
    assert "google_metadata_script_runner: startup-script: out" in serial, "the runner's copy"
    assert "google_metadata_script_runner[" in serial, "the journal's copy, through syslog"
    assert serial.count('Script "startup-script" failed with error: exit status 3') == 2


@needs_gcloud
@pytest.mark.parametrize("after_stop", ["kept", "cleared"])
def test_the_console_is_served_only_while_the_vm_runs_and_kept_or_cleared_at_a_start(
    emulator, after_stop
):
    config = vm_config("vm-1", script='#!/bin/bash\necho "boot $(date +%s%N)"\n')
    emu = emulator(
        config.replace('name = "vm-1"', f'name = "vm-1"\nconsole_after_stop = "{after_stop}"')
    )
    console = ("compute", "instances", "get-serial-port-output", "vm-1", Z)
    r = emu.gcloud(*console)
    assert r.returncode == 1 and "is not ready" in r.stderr, r.stderr
    boots = []
    for n in (1, 2):
        emu.set_instance(ZONE, "vm-1", status="RUNNING")
        wait_until(lambda: "Finished running" in emu.gcloud(*console).stdout, 20, f"boot {n}")
        boots.append([ln for ln in emu.gcloud(*console).stdout.splitlines() if "boot " in ln])
        emu.set_instance(ZONE, "vm-1", status="TERMINATED")
        assert "is not ready" in emu.gcloud(*console).stderr, "served while TERMINATED"
    assert len(boots[0]) == 1
    if after_stop == "kept":
        assert boots[1][0] == boots[0][0] and len(boots[1]) == 2, boots
    else:
        assert len(boots[1]) == 1 and boots[1] != boots[0], boots


def serial_of(emu) -> str:
    return (Path(emu.instance("vm-1")["dir"]) / "serial-port-1.log").read_text()


def test_the_script_runs_as_the_runner_runs_it(emulator, tmp_path):
    out = tmp_path / "seen"
    script = f"""#!/bin/bash
{{ pwd; echo "HOME=${{HOME-unset}} USER=${{USER-unset}}"; umask; echo "$PATH"
   stat -c '%a %n' "$0"; }} > {out}
"""
    emu = emulator(vm_config("vm-1", script=script))
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 5, 20, "the script")
    cwd, home, umask, path, script_file = out.read_text().splitlines()
    assert cwd == "/", "the runner starts the script in /"
    assert home == "HOME=unset USER=unset", "a system unit gets no HOME and no USER"
    assert umask == "0022"
    systemd_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert path.split(":", 1)[1] == systemd_path, "systemd's PATH, after the emulator's commands"
    mode, name = script_file.split(" ", 1)
    assert mode == "755" and Path(name).name == "startup-script"
    assert Path(name).parent.name.startswith("metadata-scripts"), "a copy in a temp dir"


def test_a_command_missing_from_the_image_is_missing_until_apt_get_installs_it(emulator, tmp_path):
    out = tmp_path / "seen"
    script = f"""#!/bin/bash
{{ command -v git || echo "no git"
   apt-get update -qq && apt-get install -y --no-install-recommends git
   command -v git && git --version; }} > {out} 2>&1
"""
    config = vm_config("vm-1", script=script)
    emu = emulator(config.replace('name = "vm-1"', 'name = "vm-1"\nmissing_commands = ["git"]'))
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: out.exists() and "git version" in out.read_text(), 20, "the install")
    assert out.read_text().splitlines()[0] == "no git"
    apt_log = (Path(emu.instance("vm-1")["dir"]) / "apt-get.log").read_text().splitlines()
    assert apt_log == ["update -qq", "install -y --no-install-recommends git"]


def test_poweroff_inside_the_guest_stops_its_vm(emulator):
    emu = emulator(vm_config("vm-1", script="#!/bin/bash\nsleep 0.3\npoweroff\nsleep 300\n"))
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    emu.wait_status("vm-1", "TERMINATED", timeout=20)
    assert emu.instance("vm-1")["guest_pids"] == []
    assert any(e.get("event") == "guest_poweroff" for e in emu.journal())


@needs_gcloud
def test_two_vms_boot_at_once_and_each_sees_its_own_metadata(emulator, tmp_path):
    script = f"""#!/bin/bash
echo "$({MD}/instance/name") $({MD}/instance/attributes/role")" > {tmp_path}/$HOSTNAME.seen
"""
    emu = emulator(vm_config("vm-1", "vm-2", script=script))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda name: emu.gcloud("compute", "instances", "start", name, Z), ["vm-1", "vm-2"]
            )
        )
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    for name in ("vm-1", "vm-2"):
        seen = tmp_path / f"{name}.seen"
        wait_until(seen.exists, 20, f"{name}'s script")
        assert seen.read_text().strip() == f"{name} {name}-role"


# -- the metadata server ---------------------------------------------------------------------


def test_metadata_server_answers_like_the_real_one(emulator):
    emu = emulator(vm_config("vm-1", script="#!/bin/bash\ntrue\n", app_dir="/opt/app"))
    base = f"/vm/{ZONE}/vm-1/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}

    no_header = emu.http.get(f"{base}/instance/name")
    assert no_header.status_code == 403
    assert no_header.headers["metadata-flavor"] == "Google"

    name = emu.http.get(f"{base}/instance/name", headers=flavor)
    assert (name.status_code, name.text) == (200, "vm-1")
    assert name.headers["metadata-flavor"] == "Google"
    assert emu.http.get(f"{base}/instance/attributes/app_dir", headers=flavor).text == "/opt/app"
    keys = emu.http.get(f"{base}/instance/attributes/", headers=flavor).text
    assert keys.splitlines() == ["app_dir", "role", "startup-script"]
    recursive = emu.http.get(
        f"{base}/instance/attributes/", params={"recursive": "true", "alt": "json"}, headers=flavor
    ).json()
    assert recursive["role"] == "vm-1-role"
    assert emu.http.get(f"{base}/instance/attributes/missing", headers=flavor).status_code == 404
    zone = emu.http.get(f"{base}/instance/zone", headers=flavor).text
    assert zone == f"projects/123456789012/zones/{ZONE}"
    assert emu.http.get(f"{base}/project/project-id", headers=flavor).text == "guest-project"
    ext = f"{base}/instance/network-interfaces/0/access-configs/0/external-ip"
    assert emu.http.get(ext, headers=flavor).status_code == 404, "no access config yet"
    token = emu.http.get(f"{base}/instance/service-accounts/default/token", headers=flavor)
    assert token.json()["token_type"] == "Bearer"


def test_metadata_external_ip_follows_the_access_config(emulator):
    config = (
        vm_config("vm-1", script="#!/bin/bash\ntrue\n")
        + """
[[addresses]]
name = "ip-1"
address = "127.0.0.31"
"""
    )
    emu = emulator(config)
    emu.set_instance(ZONE, "vm-1", access_configs=[{"name": "External NAT", "natIP": "127.0.0.31"}])
    r = emu.http.get(
        f"/vm/{ZONE}/vm-1/computeMetadata/v1/instance/network-interfaces/0/"
        "access-configs/0/external-ip",
        headers={"Metadata-Flavor": "Google"},
    )
    assert r.text == "127.0.0.31"
    assert emu.address("ip-1")["status"] == "IN_USE"


# -- guest attributes ------------------------------------------------------------------------

PIN_PATH = "instance/guest-attributes/vm-job-agent/tls-pin"


def test_guest_attributes_are_refused_unless_the_metadata_enables_them(emulator):
    emu = emulator(vm_config("vm-1", script="#!/bin/bash\ntrue\n"))
    base = f"/vm/{ZONE}/vm-1/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}
    r = emu.http.put(f"{base}/{PIN_PATH}", content=b"sha256//x", headers=flavor)
    assert (r.status_code, r.text) == (403, "Guest attributes endpoint access is disabled.")
    assert emu.instance("vm-1")["guest_attributes"] == {}
    emu.set_instance(ZONE, "vm-1", metadata={"enable-guest-attributes": "TRUE"})
    assert emu.http.put(f"{base}/{PIN_PATH}", content=b"sha256//x").status_code == 403, (
        "no Metadata-Flavor header: refused"
    )
    r = emu.http.put(f"{base}/{PIN_PATH}", content=b"sha256//x", headers=flavor)
    assert r.status_code == 200
    assert emu.http.get(f"{base}/{PIN_PATH}", headers=flavor).text == "sha256//x"
    bad = emu.http.put(f"{base}/instance/guest-attributes/vm-job-agent/a.b", headers=flavor)
    assert bad.status_code == 400, "names are letters, digits, - and _"


@needs_gcloud
def test_get_guest_attributes_reads_what_the_guest_published_this_boot(emulator):
    script = (
        "#!/bin/bash\ncurl -sf -X PUT --data \"boot-$(date +%s%N)\" -H 'Metadata-Flavor: Google' "
        f'"http://$GCE_METADATA_HOST/computeMetadata/v1/{PIN_PATH}"\nsleep 300\n'
    )
    emu = emulator(vm_config("vm-1", script=script, **{"enable-guest-attributes": "TRUE"}))
    query = ("compute", "instances", "get-guest-attributes", "vm-1", Z)
    missing = emu.gcloud(*query, "--query-path=vm-job-agent/tls-pin")
    assert missing.returncode == 1
    assert (
        "HTTPError 404: The resource 'vm-job-agent/tls-pin' of type 'Guest Attribute' "
        "was not found." in missing.stderr
    )
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: emu.instance("vm-1")["guest_attributes"], 20, "the guest's PUT")
    first = emu.gcloud(*query, "--query-path=vm-job-agent/tls-pin", "--format=value(value)")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("boot-")
    table = emu.gcloud(*query, "--query-path=vm-job-agent/")
    header, row = table.stdout.splitlines()
    assert (header.split(), row.split()) == (
        ["NAMESPACE", "KEY", "VALUE"],
        ["vm-job-agent", "tls-pin", first.stdout.strip()],
    )
    variable = emu.http.get(
        f"/compute/v1/projects/guest-project/zones/{ZONE}/instances/vm-1/getGuestAttributes",
        params={"variableKey": "vm-job-agent/tls-pin"},
        headers={"Authorization": "Bearer x"},
    ).json()
    assert variable["variableValue"] == first.stdout.strip()
    emu.set_instance(ZONE, "vm-1", status="TERMINATED")
    emu.set_instance(ZONE, "vm-1", status="RUNNING")
    wait_until(lambda: emu.instance("vm-1")["guest_attributes"], 20, "the second boot's PUT")
    second = emu.gcloud(*query, "--query-path=vm-job-agent/tls-pin", "--format=value(value)")
    assert second.stdout != first.stdout, "a value is current only if this boot wrote it"

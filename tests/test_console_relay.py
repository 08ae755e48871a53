"""The relay of the VM's serial console (orchestrator/watcher.sh), on console text as each script
runner writes it: only this boot's lines, each once, with startup.sh's time."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import REPO

MODULES = ("json", "logging", "children", "compute", "watcher")
SINCE = "2026-12-02T06:00:00Z"  # a second before the start
RUNNER = "Dec 02 06:00:05 google_metadata_script_runner"


def relay(tmp_path: Path, console: str, tz: str = "UTC0") -> list[str]:
    """What this_boot_lines passes on from console text (through startup_lines first, as
    relay_console reads it), with CONSOLE_SINCE=SINCE: `HH:MM:SS|line` or `|line`. State
    between reads stays in tmp_path, as in the orchestrator's WORK_DIR."""
    sources = "; ".join(f'source "{REPO}/orchestrator/{m}.sh"' for m in MODULES)
    script = f"set -euo pipefail; {sources}; WORK_DIR=$1 CONSOLE_SINCE=$2; "
    script += "startup_lines | this_boot_lines"
    r = subprocess.run(
        ["bash", "-c", script, "bash", str(tmp_path), SINCE],
        input=console,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TZ": tz},
        check=True,
    )
    return [line.replace("\x1f", "|") for line in r.stdout.splitlines()]


def legacy(line: str) -> str:
    return f"{RUNNER}: startup-script: {line}\n"


EARLIER_BOOT = (
    legacy("2026-12-01T21:00:01Z startup.sh INFO    boot 1/6 starting")
    + legacy("2026-12-01T21:00:02Z startup.sh ERROR   boot 4/6 .env: no secret")
    + f"{RUNNER}: startup-script exit status 1\n"
    + "Dec 01 21:00:09 systemd[1]: Reached target power-off.\n"
)


def test_an_earlier_boots_lines_and_failure_line_kept_on_the_console_are_not_this_boots(
    tmp_path,
):
    """Compute Engine may keep the console across a stop: the relay reads from byte 0 and
    must not take the earlier boot's failure for this one's."""
    this_boot = legacy("2026-12-02T06:00:03Z startup.sh INFO    boot 1/6 starting") + legacy(
        "uv: Resolved 3 packages"
    )
    assert relay(tmp_path, EARLIER_BOOT + this_boot) == [
        "06:00:03|startup.sh INFO    boot 1/6 starting",
        "|uv: Resolved 3 packages",
    ]


def test_nothing_is_relayed_until_this_boot_writes_its_first_stamped_line(tmp_path):
    assert relay(tmp_path, EARLIER_BOOT) == []
    # the next read: this boot has begun (unstamped lines before its first are not its own)
    later = legacy("a line of no boot") + legacy("2026-12-02T06:00:04Z startup.sh INFO    x")
    assert relay(tmp_path, later) == ["06:00:04|startup.sh INFO    x"]
    # and from then on every line is, stamped or not, failure line included
    failed = legacy("plain output") + f"{RUNNER}: startup-script exit status 3\n"
    assert relay(tmp_path, failed) == ["|plain output", "|startup-script exit status 3"]


def test_a_line_the_console_carries_twice_is_relayed_once_across_reads(tmp_path):
    """The older runner from 20240802 (StandardOutput=journal+console): its own copy, then the
    journal's through syslog, a line or a read later."""
    first = "2026-12-02T06:00:03Z startup.sh INFO    boot 1/6 starting"
    second = "2026-12-02T06:00:04Z startup.sh INFO    boot 2/6 the checkout"
    syslog = "Dec 02 06:00:05 google_metadata_script_runner[248]: startup-script: "
    assert relay(tmp_path, legacy(first) + legacy(second) + syslog + first + "\n") == [
        "06:00:03|startup.sh INFO    boot 1/6 starting",
        "06:00:04|startup.sh INFO    boot 2/6 the checkout",
    ]
    assert relay(tmp_path, syslog + second + "\n") == []


def test_startup_sh_s_utc_time_is_shown_in_the_logs_time_zone(tmp_path):
    line = legacy("2026-12-02T23:59:58Z startup.sh INFO    late")
    assert relay(tmp_path, line, tz="KST-9") == ["08:59:58|startup.sh INFO    late"]


def test_the_newer_runners_lines_are_this_boots_too(tmp_path):
    prefix = "google_metadata_script_runner: 2026-12-02T06:00:03.1Z [INFO]: "
    prefix += 'Metadata key("startup-script"), command("/bin/bash"): '
    assert relay(tmp_path, prefix + "2026-12-02T06:00:03Z startup.sh INFO    ok\n") == [
        "06:00:03|startup.sh INFO    ok"
    ]

"""The boot benchmarks read their figures off the console: each startup.sh step's own timing
(bench/boot.py) and, on a real VM, each phase's console line (bench/real_vm_boot.py). A change
of startup.sh's wording must fail here, not print zeros."""

from __future__ import annotations

import pytest

from bench.boot import step_times
from bench.real_vm_boot import phases

# lines as a real VM's console has them (rsyslog's prefix, then the runner's, then startup.sh's)
PREFIX = "2026-12-02T18:07:58.1+00:00 demo-vm google_metadata_script_runner[262]: startup-script: "
BOOT = [
    "2026-12-02T18:07:56Z startup.sh INFO    boot 1/6 created the system user jobrunner",
    "2026-12-02T18:08:01Z startup.sh INFO    boot 2/6 tls: no key yet: made one; published its "
    "pin as the guest attribute vm-job-agent/tls-pin: sha256//FclLy= (3.83s)",
    "2026-12-02T18:09:41Z startup.sh INFO    installed git (99.26s)",
    "2026-12-02T18:09:43Z startup.sh INFO    boot 3/6 code: first boot: cloned git://169.254.169.1"
    ":52845/origin.git (main) into /opt/vm-job-runner (2.32s)",
    "2026-12-02T18:09:46Z startup.sh INFO    boot 3/6 code: 34d7124 -> 34d7124 (origin/main) "
    "(105.73s)",
    "2026-12-02T18:10:42Z startup.sh INFO    boot 4/6 .env: written from secret app-env (4 lines, "
    "mode 0600) (55.30s)",
    "2026-12-02T18:13:26Z startup.sh INFO    boot 5/6 dependencies: uv sync --frozen (164.14s)",
    "2026-12-02T18:13:26Z startup.sh INFO    boot steps done in 338.04s",
]


def test_each_step_is_its_last_timed_line_not_a_sum_with_the_clone_or_an_install():
    assert step_times(PREFIX + line for line in BOOT) == {
        "tls": 3.83,
        "code": 105.73,
        ".env": 55.30,
        "sync": 164.14,
    }


def test_the_process_guests_console_format_is_read_too():
    runner = 'google_metadata_script_runner: 2026-12-02T06:00:00.1Z [INFO]: Metadata key("startup-'
    runner += 'script"), command("/bin/bash"): '
    assert step_times(runner + line for line in BOOT)["code"] == 105.73


def test_a_real_boot_is_split_at_its_console_lines():
    lines = [
        (100.0, "Dec 02 18:07:13 gcp_emulator: booting demo-vm under QEMU (tcg)"),
        (101.5, "[    0.000000] Linux version 6.1.0-50-cloud-amd64"),
        (110.0, "Welcome to Debian GNU/Linux 12 (bookworm)!"),
        (130.0, "2026-12-02T18:07:43+00:00 demo-vm google_guest_agent[235]: GCE Agent Started"),
        (136.0, PREFIX + "2026-12-02T18:07:48Z startup.sh INFO    starting (pid 277, user root)"),
        *((140.0 + n, PREFIX + line) for n, line in enumerate(BOOT)),
    ]
    split = phases(lines, started=100.0, ready=200.0)
    assert split["boot-to-ready"] == 100.0
    assert (split["firmware"], split["kernel"], split["systemd"], split["runner"]) == (
        1.5,
        8.5,
        20.0,
        6.0,
    )
    assert split["agent start"] == 200.0 - 147.0
    assert split["sync"] == 164.14


def test_a_boot_whose_console_lacks_a_phase_is_an_error_not_a_zero():
    with pytest.raises(SystemExit, match="GCE Agent Started"):
        phases([(101.0, "Linux version 6.1"), (110.0, "Welcome to Debian")], 100.0, 200.0)

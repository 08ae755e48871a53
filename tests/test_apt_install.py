"""startup.sh's need_command on its own (sourced, no VM): a command the image lacks is installed
with apt-get, the package index fetched once a boot however many packages follow."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="need_command installs only as root")

FAKE_APT = """#!/bin/bash
# apt-get that notes each call (and, with APT_SLOW, its start and end, a moment apart); `install
# PKG` puts the command PKG-cmd in place
if [[ -n ${APT_SLOW:-} ]]; then
  printf 'start %s\\n' "$*" >> "$APT_LOG"; sleep "$APT_SLOW"; printf 'end %s\\n' "$*" >> "$APT_LOG"
else
  printf '%s\\n' "$*" >> "$APT_LOG"
fi
if [[ ${FAIL_UPDATE:-0} == 1 && $1 == update ]]; then
  echo "E: Could not resolve deb.debian.org" >&2; exit 100
fi
for arg; do
  [[ $arg == pkg-* ]] || continue
  printf '#!/bin/sh\\n' > "$FAKE_BIN/${arg#pkg-}-cmd"; chmod +x "$FAKE_BIN/${arg#pkg-}-cmd"
done
"""


def need(
    tmp_path: Path, calls: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the need_command calls (`need_command CMD PACKAGE; ...`) with a fake apt-get that
    installs pkg-X as the command X-cmd: (result, apt-get's calls)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "apt-get").write_text(FAKE_APT)
    (fake_bin / "apt-get").chmod(0o755)
    log = tmp_path / "apt.log"
    r = subprocess.run(
        ["bash", "-c", f"source {REPO / 'startup.sh'}; set +E; {calls}; echo DONE"],
        env={
            **os.environ,
            "PATH": f"{fake_bin}:/usr/bin:/bin",
            "FAKE_BIN": str(fake_bin),
            "APT_LOG": str(log),
            "GCE_METADATA_HOST": "127.0.0.1:9",  # nothing listens: the boot state goes nowhere
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r, log.read_text().splitlines() if log.exists() else []


def test_the_package_index_is_fetched_once_for_two_missing_commands(tmp_path):
    r, calls = need(tmp_path, "need_command git-cmd pkg-git; need_command pip3-cmd pkg-pip3")
    assert "DONE" in r.stdout, r.stderr
    assert calls == [
        "update -qq",
        "install -y -qq --no-install-recommends pkg-git",
        "install -y -qq --no-install-recommends pkg-pip3",
    ]
    assert "installing pkg-git with apt-get" in r.stdout
    assert "installed pkg-pip3 (" in r.stdout


def test_a_command_that_is_there_installs_nothing(tmp_path):
    r, calls = need(tmp_path, "need_command bash bash")
    assert "DONE" in r.stdout, r.stderr
    assert calls == []


def test_a_failed_index_update_fails_the_boot_with_apts_reason(tmp_path):
    r, calls = need(tmp_path, "need_command git-cmd pkg-git", FAIL_UPDATE="1")
    assert "DONE" not in r.stdout
    assert r.returncode == 1
    assert calls == ["update -qq"], "nothing is installed from a stale index"
    assert (
        "installing pkg-git failed: apt-get update: E: Could not resolve deb.debian.org" in r.stderr
    )


def test_steps_side_by_side_take_turns_with_apt_get_and_share_one_index(tmp_path):
    """Two boot steps that each miss a command (the key's openssl, the code's git) run at once:
    apt-get never runs twice at a time (dpkg's lock would refuse the second), and the package
    index is fetched once."""
    stage = tmp_path / "stage"
    stage.mkdir()
    r, calls = need(
        tmp_path,
        f"STAGE={stage}; (need_command git-cmd pkg-git) & (need_command ssl-cmd pkg-ssl) & wait",
        APT_SLOW="0.3",
    )
    assert "DONE" in r.stdout, r.stderr
    assert [c.split()[0] for c in calls] == ["start", "end"] * 3, f"apt-get overlapped: {calls}"
    assert [c for c in calls if c.startswith("start")].count("start update -qq") == 1
    installed = {c.split()[-1] for c in calls if c.startswith("start install")}
    assert installed == {"pkg-git", "pkg-ssl"}

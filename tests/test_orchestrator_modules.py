"""entrypoint.sh is the plan and orchestrator/ holds its modules: each can be sourced alone, says
in its header what it owns, and writes no other module's globals; the image carries every file
entrypoint.sh sources, and runs from there."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

MODULES = sorted((REPO / "orchestrator").glob("*.sh"))
SOURCE_LINE = re.compile(r'^source "\$ORCHESTRATOR/([a-z_]+\.sh)"', re.MULTILINE)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')
# NAME= or NAME+= where a shell assignment can stand (not $NAME=, --flag=NAME=, a=NAME=...).
ASSIGNMENT = re.compile(r"(?:^|[\s;&|({])([A-Z][A-Z0-9_]*)\+?=")
# Assignments in front of a command are its parameters, not the module's state.
COMMAND_PREFIX = {"IFS"}


def sourced() -> list[str]:
    return SOURCE_LINE.findall((REPO / "entrypoint.sh").read_text())


def code_of(path: Path) -> str:
    """The script without comments, strings and here-documents: what assigns is left."""
    text = re.sub(r"<<([A-Z]+)\n.*?\n\1\n", "\n", path.read_text(), flags=re.DOTALL)
    lines = []
    for line in text.splitlines():
        line = STRING.sub('""', line)
        lines.append(re.sub(r"(^|\s)#.*$", "", line))
    return "\n".join(lines)


def assigned(path: Path) -> set[str]:
    """The upper-case globals the file assigns anywhere (local ones are lower-case here)."""
    return set(ASSIGNMENT.findall(code_of(path))) - COMMAND_PREFIX


def test_entrypoint_sources_every_module_and_nothing_else():
    assert sorted(sourced()) == [m.name for m in MODULES], (
        "entrypoint.sh must source each orchestrator/*.sh once"
    )


def test_entrypoint_is_the_plan_a_page_or_two_long():
    text = (REPO / "entrypoint.sh").read_text()
    functions = re.findall(r"^([a-z_]+)\(\) \{", text, re.MULTILINE)
    assert functions == ["usage", "main"], (
        f"entrypoint.sh defines {functions}: the rest is a module's"
    )
    assert len(text.splitlines()) <= 150, "entrypoint.sh is longer than a page or two"
    steps = re.findall(r"# ([1-7])\. ", text.split("main() {", 1)[1])
    assert steps == ["7", "1", "2", "3", "4", "5", "6"], f"main's numbered steps: {steps}"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_each_module_sources_alone_and_only_defines(module):
    """Sourced alone under the script's own options, a module prints nothing and runs nothing:
    tests (and people) can load one and call its functions."""
    r = subprocess.run(
        ["bash", "-c", 'set -Eeuo pipefail; source "$1"; declare -F | wc -l', "bash", module],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode == 0, f"sourcing {module.name} alone failed: {r.stderr}"
    assert r.stderr == "", f"sourcing {module.name} printed: {r.stderr}"
    assert int(r.stdout) >= 1, f"{module.name} defines no function"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_each_module_says_what_it_owns_and_reads(module):
    header = module.read_text().split("\n\n", 1)[0]
    assert header.startswith(f"# shellcheck shell=bash\n# orchestrator/{module.name}: "), (
        f"{module.name} does not open with what it holds"
    )
    assert re.search(r"^# (Sets|Private|Reads)", header, re.MULTILINE), (
        f"{module.name}'s header names neither the globals it sets nor those it reads"
    )


def test_no_module_writes_another_modules_globals():
    owners: dict[str, set[str]] = {}
    for path in [REPO / "entrypoint.sh", *MODULES]:
        for name in assigned(path):
            owners.setdefault(name, set()).add(path.name)
    shared = {name: sorted(files) for name, files in owners.items() if len(files) > 1}
    assert shared == {}, f"globals written by more than one file: {shared}"
    # the check sees what it must: the flags the cleanup undoes are each one module's
    assert owners["OWN_VM"] == {"vm.sh"} and owners["OWN_IP"] == {"address.sh"}, owners


def test_the_ownership_check_sees_an_assignment_from_elsewhere(tmp_path):
    stray = tmp_path / "stray.sh"
    stray.write_text('f() {\n  log INFO "KEEP_VM=1: kept"  # OWN_IP=1\n  OWN_VM=0 CLAIMED=0\n}\n')
    assert assigned(stray) == {"OWN_VM", "CLAIMED"}


def dockerignore_keeps(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `rel` into the build context (last matching pattern wins)."""
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            keep = negate
    return keep


def image_tree(root: Path) -> Path:
    """What the Dockerfile's COPY lines put in the image, from the context .dockerignore leaves."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = re.findall(r"^COPY +(\S+) +(\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert copies, "the Dockerfile copies nothing"
    for src, dest in copies:
        source = REPO / src.rstrip("/")
        files = (
            [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        )
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if not dockerignore_keeps(rel, patterns):
                continue
            inner = f.relative_to(source) if source.is_dir() else Path(f.name)
            target = root / dest.lstrip("/")
            target = target / inner if (dest.endswith("/") or source.is_dir()) else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return root


def test_the_image_holds_every_file_entrypoint_sources_and_runs_it(tmp_path):
    root = image_tree(tmp_path / "image")
    app = root / "app"
    for name in sourced():
        assert (app / "orchestrator" / name).is_file(), f"the image lacks orchestrator/{name}"
    entry = app / "entrypoint.sh"
    r = subprocess.run([entry, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "usage: entrypoint.sh" in r.stdout, r.stderr
    # run from elsewhere, as the image's WORKDIR /tmp does: the modules are found beside it
    r = subprocess.run(
        [entry],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
    )
    assert r.returncode == 2, r.stderr
    assert "configuration: PROJECT_ID REGION ZONE STATIC_NAME AGENT_TOKEN" in r.stderr, r.stderr


def test_the_image_installs_the_cronsim_that_uv_lock_pins():
    """slot.py runs on the image's python3 with the cronsim the Dockerfile installs: the same
    version the tests run with."""
    lock = (REPO / "uv.lock").read_text()
    locked = re.search(r'name = "cronsim"\nversion = "([^"]+)"', lock)
    assert locked, "uv.lock has no cronsim"
    assert f"cronsim=={locked[1]}" in (REPO / "Dockerfile").read_text()

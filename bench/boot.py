"""Benchmark of the VM's boot (run by hand: `uv run python bench/boot.py`).

On the emulator, a VM whose startup-script is startup.sh over a cloned disk (as in the demo):
boot-to-ready = the guest's start (emulator journal) to the agent's first 200 on `GET /`, with
no configured delays. Scenarios: the first boot of a stock image (no git: the emulator's
apt-get "installs" it, so that step is instant here; no checkout: repo-url is cloned; uv creates
.venv; the TLS key is made), the first boot of a prepared disk, warm boots (code and .venv
there), and boots after a new commit was pushed to origin. The split by step comes from
startup.sh's own timings on the serial console ("code" holds the first clone). Target (issue
5): warm boot-to-ready < 3 s.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcp_emulator.config import dump_config  # noqa: E402
from gcp_emulator.demo import demo_config, make_disk, push_commit  # noqa: E402
from tests.harness import EmulatorProcess  # noqa: E402

ZONE = "asia-northeast3-c"
# startup.sh's timed lines, `boot 3/6 code: 34d7124 -> 5e1f0aa (origin/main) (0.31s)`: a step's
# last timed line is its total (a first clone's own line, an install's, come before it)
STEP_RE = re.compile(r"startup\.sh INFO +boot (\d)/6 [^:]+: .*\((\d+\.\d+)s\)$")
STEPS = {"2": "tls", "3": "code", "4": ".env", "5": "sync"}


def step_times(lines: Iterable[str]) -> dict[str, float]:
    """Each startup.sh step's seconds (STEPS' names), from its own timings on the console."""
    found: dict[str, float] = {}
    for line in lines:
        hit = STEP_RE.search(line.rstrip())
        if hit and hit[1] in STEPS:
            found[STEPS[hit[1]]] = float(hit[2])
    return found


def boot_once(emu: EmulatorProcess, serial: Path, url: str) -> dict[str, float]:
    emu.clear_journal()
    offset = serial.stat().st_size
    emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    deadline = time.monotonic() + 120
    while True:
        try:
            # health only, no token: the key is the VM's own self-signed one
            if httpx.get(url, timeout=1, verify=False).status_code == 200:  # noqa: S501
                ready = time.time()
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the agent did not answer: {serial.read_text()[offset:]}")
        time.sleep(0.005)
    started = next(e["time"] for e in emu.journal() if e.get("event") == "guest_start")
    result = {"boot-to-ready": ready - started}
    with serial.open() as f:
        f.seek(offset)
        result.update(step_times(f))
    missing = [k for k in STEPS.values() if k not in result]
    if missing:
        raise SystemExit(f"no timing for {missing} on the console: {serial.read_text()[offset:]}")
    result["agent start"] = result["boot-to-ready"] - sum(
        result.get(k, 0.0) for k in STEPS.values()
    )
    emu.set_instance(ZONE, "demo-vm", status="TERMINATED")
    return result


def booted_vm(base: Path, name: str, **demo: object) -> tuple[EmulatorProcess, Path, str]:
    """An emulator process with the demo VM over a disk in base/name: (emulator, its serial
    log, the agent's health URL)."""
    disk = make_disk(base / name)
    if demo.pop("clone", True) is False:
        shutil.rmtree(disk.app)
        demo["metadata"] = {"repo-url": str(disk.origin)}
    cfg = demo_config(disk, boot_delay=0.0, **demo)  # type: ignore[arg-type]
    config = base / f"{name}.toml"
    config.write_text(dump_config(cfg.config))
    emu = EmulatorProcess(config, base / f"{name}-emulator")
    inst = emu.instance("demo-vm")
    return emu, Path(inst["dir"]) / "serial-port-1.log", f"https://{inst['network_ip']}:{cfg.port}/"


def stock_first_boot(base: Path) -> dict[str, float]:
    """One first boot of a stock image: no git on it, no checkout (repo-url), no .venv, no key."""
    emu, serial, url = booted_vm(base, "stock", clone=False, missing_commands=["git"])
    try:
        return boot_once(emu, serial, url)
    finally:
        emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=5, help="boots per scenario")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vm-job-bench-"))
    base.chmod(0o755)
    try:
        emu, serial, url = booted_vm(base, "vm")
        disk_origin = base / "vm" / "origin.git"
        try:
            rows = [("stock image, first boot", [stock_first_boot(base)])]
            rows.append(("first boot (creates .venv)", [boot_once(emu, serial, url)]))
            rows.append(("warm", [boot_once(emu, serial, url) for _ in range(args.boots)]))
            after = []
            for n in range(args.boots):
                push_commit(disk_origin, {"bench-marker.txt": f"{n}\n"}, f"bench commit {n}")
                after.append(boot_once(emu, serial, url))
            rows.append(("after a new commit", after))
        finally:
            emu.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    keys = ["boot-to-ready", *STEPS.values(), "agent start"]
    print(f"{'median seconds':28}" + "".join(f"{k:>15}" for k in keys))
    for name, results in rows:
        print(
            f"{name:28}"
            + "".join(f"{statistics.median(r.get(k, 0.0) for r in results):>15.2f}" for k in keys)
        )
    print(
        f"({args.boots} boots per scenario; 'agent start' = boot-to-ready minus the steps "
        "before it: bash, settings and the uvicorn cold start)"
    )


if __name__ == "__main__":
    main()

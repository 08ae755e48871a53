"""Benchmark of a real VM's boot (run by hand, as root: `uv run python bench/real_vm_boot.py`).

The demo VM as a Debian 12 VM under QEMU (gcp_emulator/guests/qemu.py, TCG here): startup.sh
is its startup-script and its repo-url a git daemon on this host, as in `demo --vm qemu`. The
first boot is a stock image's (startup.sh installs git and uv, clones, syncs, makes the
key); each warm boot follows a commit pushed to origin, so its code step fetches. boot-to-ready
runs from the guest's start (the emulator's journal) to the agent's first 200 on `GET /`,
through the port forwarded from the VM's address. Its split comes from the console's arrival
times (serial-port-1.times beside the log): firmware (to the kernel's first line), kernel (to
systemd's "Welcome to"), systemd (to the guest agent's "GCE Agent Started"), runner (to
startup.sh's first line), startup.sh's steps (its own timings), agent start (from its last
step to the 200), and startup.sh's part of the boot: from its first line to the 200 (its steps
run side by side, so they do not add up to it). The process guest's boots (bench/boot.py) are
printed beside them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.boot import STEPS, boot_once, booted_vm, step_times, stock_first_boot  # noqa: E402
from gcp_emulator.config import dump_config  # noqa: E402
from gcp_emulator.demo import GitServer, demo_config, make_disk, push_commit  # noqa: E402
from gcp_emulator.guests import vm_image  # noqa: E402
from gcp_emulator.guests.qemu import qemu_missing  # noqa: E402
from tests.harness import EmulatorProcess  # noqa: E402

ZONE = "asia-northeast3-c"
# (phase, the console line that ends it); each begins where the one before ended
MARKS = (
    ("firmware", "Linux version"),
    ("kernel", "Welcome to"),
    ("systemd", "GCE Agent Started"),
    ("runner", "startup.sh INFO    starting"),
)
COLUMNS = ["boot-to-ready", *(m[0] for m in MARKS), *STEPS.values(), "agent start"]


def console_since(log: Path, times: Path, offset: int) -> list[tuple[float, str]]:
    """(arrival time, line) of each console line that begins at or after offset."""
    data = log.read_bytes()
    rows = []
    for row in times.read_text().splitlines():
        when, start = row.split()
        if int(start) >= offset:
            end = data.find(b"\n", int(start))
            rows.append((float(when), data[int(start) : end].decode("utf-8", "replace")))
    return rows


def phases(lines: list[tuple[float, str]], started: float, ready: float) -> dict[str, float]:
    """A real boot's split (COLUMNS) from its console lines' arrival times."""
    result = {"boot-to-ready": ready - started}
    at = started
    for name, mark in MARKS:
        when = next((t for t, line in lines if mark in line and t >= at), None)
        if when is None:
            raise SystemExit(f"no '{mark}' on the console after {name} began")
        result[name], at = when - at, when
    result.update(step_times(line for _, line in lines))
    done = next((t for t, line in lines if "startup.sh INFO    boot steps done" in line), None)
    if done is None or any(k not in result for k in STEPS.values()):
        raise SystemExit("startup.sh's steps are not all on the console")
    result["agent start"] = ready - done
    # startup.sh's own part: from its first line to the agent's answer (its steps overlap)
    result["startup.sh"] = result["boot-to-ready"] - sum(result[m[0]] for m in MARKS)
    return result


def real_boot(emu: EmulatorProcess, url: str, timeout: float) -> dict[str, float]:
    inst_dir = Path(emu.instance("demo-vm")["dir"])
    log, times = inst_dir / "serial-port-1.log", inst_dir / "serial-port-1.times"
    offset = log.stat().st_size if log.exists() else 0
    emu.clear_journal()
    emu.set_instance(ZONE, "demo-vm", status="RUNNING")
    deadline = time.monotonic() + timeout
    while True:
        try:
            # health only, no token: the key is the VM's own self-signed one
            if httpx.get(url, timeout=2, verify=False).status_code == 200:  # noqa: S501
                ready = time.time()
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the agent did not answer in {timeout:.0f} s; console: {log}")
        time.sleep(0.2)
    started = next(e["time"] for e in emu.journal() if e.get("event") == "guest_start")
    result = phases(console_since(log, times, offset), started, ready)
    stop = time.monotonic()
    emu.set_instance(ZONE, "demo-vm", status="TERMINATED")
    emu.wait_status("demo-vm", "TERMINATED", timeout=120)
    result["stop"] = time.monotonic() - stop
    return result


def real_rows(base: Path, warm: int) -> list[tuple[str, list[dict[str, float]]]]:
    disk = make_disk(base / "real")
    with GitServer(disk.base) as git:
        cfg = demo_config(disk, repo_url=git.url(disk.origin), boot_delay=0.0)
        config = base / "real.toml"
        config.write_text(dump_config(cfg.config))
        emu = EmulatorProcess(config, base / "real-emulator")
        try:
            inst = emu.instance("demo-vm")
            url = f"https://{inst['network_ip']}:{cfg.port}/"
            rows = [("real VM, stock image, first", [real_boot(emu, url, 1200)])]
            after = []
            for n in range(warm):
                push_commit(disk.origin, {"bench-marker.txt": f"{n}\n"}, f"bench commit {n}")
                after.append(real_boot(emu, url, 600))
            rows.append(("real VM, warm, new commit", after))
        finally:
            emu.stop()
    return rows


def process_rows(base: Path, warm: int) -> list[tuple[str, list[dict[str, float]]]]:
    emu, serial, url = booted_vm(base, "process")
    try:
        rows = [("process, stock image, first", [stock_first_boot(base)])]
        boot_once(emu, serial, url)  # the prepared disk's first boot (creates .venv)
        after = []
        for n in range(warm):
            push_commit(base / "process" / "origin.git", {"m.txt": f"{n}\n"}, f"commit {n}")
            after.append(boot_once(emu, serial, url))
        rows.append(("process, warm, new commit", after))
    finally:
        emu.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=2, help="warm boots of each guest")
    parser.add_argument(
        "--keep", action="store_true", help="keep the VMs' state (their consoles) and say where"
    )
    args = parser.parse_args()
    why = qemu_missing()
    if why is not None:
        raise SystemExit(f"no real VMs here: {why}")
    t0 = time.monotonic()
    image = vm_image.build()
    print(f"image {image.dir.name}: {time.monotonic() - t0:.0f} s (0 when cached)", flush=True)
    base = Path(tempfile.mkdtemp(prefix="vm-job-bench-"))
    base.chmod(0o755)
    try:
        rows = real_rows(base, args.warm) + process_rows(base, args.warm)
    finally:
        if args.keep:
            print(
                f"kept: {base} (the real VM's console: "
                "real-emulator/instances/*/*/serial-port-1.log)"
            )
        else:
            shutil.rmtree(base, ignore_errors=True)
    keys = [*COLUMNS, "startup.sh", "stop"]
    print(f"{'median seconds':30}" + "".join(f"{k:>14}" for k in keys))
    for name, results in rows:
        cells = []
        for k in keys:
            values = [r[k] for r in results if k in r]
            cells.append(f"{statistics.median(values):>14.2f}" if values else f"{'-':>14}")
        print(f"{name:30}" + "".join(cells))
    print(
        f"({args.warm} warm boots each; TCG; firmware..runner from the console's arrival "
        "times, the steps from startup.sh's own (tls, code, .env and uv's install run side by "
        "side); startup.sh: from its first line to the agent's answer; stop: the API's stop to "
        "TERMINATED)"
    )
    for name, results in rows:
        if results and "startup.sh" in results[0]:
            shares = [r["startup.sh"] / r["boot-to-ready"] for r in results]
            print(f"startup.sh's share of '{name}': {statistics.median(shares):.0%}")


if __name__ == "__main__":
    main()

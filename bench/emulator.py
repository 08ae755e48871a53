"""Benchmark of the emulator (run by hand: `uv run python bench/emulator.py`).

Prints: start-up (exec of `python -m gcp_emulator serve` to its first answer), the latency of
`GET instance` and of a start+wait+stop cycle over HTTP, and, for scale, one `gcloud compute
instances describe` through the real CLI. Target (issue 3): start-up < 1 s, a few ms a call.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import EmulatorProcess  # noqa: E402

AUTH = {"Authorization": "Bearer bench"}


def start(state: Path) -> tuple[EmulatorProcess, float]:
    """The emulator with its default configuration, and seconds from exec to its first answer."""
    t0 = time.perf_counter()
    emu = EmulatorProcess(None, state)  # returns once the export lines are printed
    while True:
        try:
            emu.http.get("/_emulator/health")
            return emu, time.perf_counter() - t0
        except httpx.TransportError:
            time.sleep(0.002)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        startups = []
        for n in range(5):
            emu, seconds = start(Path(tmp) / f"s{n}")
            startups.append(seconds)
            emu.stop()
        emu, _ = start(Path(tmp) / "main")
        base = "/compute/v1/projects/demo-project/zones/us-central1-a"
        try:
            with httpx.Client(base_url=emu.url, headers=AUTH) as http:
                gets = []
                for _ in range(500):
                    t = time.perf_counter()
                    http.get(f"{base}/instances/vm-1").raise_for_status()
                    gets.append(time.perf_counter() - t)
                cycles = []
                for _ in range(10):
                    t = time.perf_counter()
                    for verb in ("start", "stop"):
                        op = http.post(f"{base}/instances/vm-1/{verb}").json()
                        http.post(f"{base}/operations/{op['name']}/wait", timeout=30)
                    cycles.append(time.perf_counter() - t)
            gcloud = []
            if shutil.which("gcloud"):
                for _ in range(3):
                    t = time.perf_counter()
                    r = emu.gcloud(
                        "compute",
                        "instances",
                        "describe",
                        "vm-1",
                        "--zone=us-central1-a",
                        "--format=value(status)",
                    )
                    assert r.returncode == 0, r.stderr
                    gcloud.append(time.perf_counter() - t)
        finally:
            emu.stop()
    print(f"{'measure':44} {'figure':>24}")
    print(
        f"{'start-up (exec to first answer)':44} "
        f"{statistics.median(startups) * 1000:>12.0f} ms median"
    )
    print(
        f"{'GET instance':44} {statistics.median(gets) * 1000:>12.2f} ms p50, "
        f"{sorted(gets)[int(len(gets) * 0.99)] * 1000:.2f} ms p99"
    )
    print(
        f"{'start+wait+stop+wait (default delays 0.15 s)':44} "
        f"{statistics.median(cycles) * 1000:>12.0f} ms median"
    )
    if gcloud:
        print(
            f"{'gcloud describe, whole CLI run (for scale)':44} "
            f"{statistics.median(gcloud) * 1000:>12.0f} ms median"
        )


if __name__ == "__main__":
    main()

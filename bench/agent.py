"""Benchmark of the agent on this machine (run by hand: `uv run python bench/agent.py`).

Prints a small table:
- cold start: exec of `uvicorn fastapi_app:app` to the first 200 on `GET /`;
- `GET /` latency over a keep-alive connection, p50 and p99;
- job exit to long-poll answer: the job's last command writes the time, then exits; we note
  when `GET /runs/{id}?wait=30` answers;
- a flood of 1,100 idle connections (issue 11): `GET /` latency on a new connection while they
  are held, how many the agent keeps open (MAX_CONNECTIONS, 500), and how long until it has
  closed every idle one (CONNECTION_TIMEOUT, 5 s).

Targets (DEVELOPERS' issue 2): cold start < 1.5 s, `GET /` p50 < 2 ms, exit-to-answer < 50 ms.
The agent runs as startup.sh runs it (--http agent.connections:GuardedH11Protocol).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcp_emulator.demo import free_port  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_agent(workdir: Path, job_command: str) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start uvicorn; return (process, base url, seconds from exec to the first 200)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AGENT_TOKEN": TOKEN,
        "STATE_DIR": str(workdir / "state"),
        "IDLE_SHUTDOWN": "0",
        "JOB_COMMAND": job_command,
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(REPO),
            "fastapi_app:app",
            "--http",
            "agent.connections:GuardedH11Protocol",
            "--backlog",
            "256",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"agent exited with {proc.returncode}")
        if time.perf_counter() - started > 30:
            raise SystemExit("agent did not answer within 30 s")
        time.sleep(0.005)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(15)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def flood(url: str, count: int) -> tuple[list[float], int, float]:
    """(GET / latencies on new connections while count idle ones are held, how many of those the
    agent kept open, seconds until it had closed them all)."""
    port = int(url.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    opened = time.perf_counter()
    try:
        latencies = []
        for _ in range(20):
            t = time.perf_counter()
            assert httpx.get(url + "/", timeout=10).status_code == 200
            latencies.append(time.perf_counter() - t)
        time.sleep(0.5)
        kept = len(socks) - sum(closed(s) for s in socks)
        while sum(closed(s) for s in socks) < len(socks):
            if time.perf_counter() - opened > 60:
                raise SystemExit("idle connections still open after 60 s")
            time.sleep(0.1)
        return latencies, kept, time.perf_counter() - opened
    finally:
        for s in socks:
            s.close()


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts to time")
    parser.add_argument("--requests", type=int, default=2000, help="GET / requests to time")
    parser.add_argument("--runs", type=int, default=20, help="runs for exit-to-answer")
    parser.add_argument("--flood", type=int, default=1100, help="idle connections to hold")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stamp = work / "end"
        command = f"date +%s.%N > {stamp}"
        cold = []
        for _ in range(args.starts):
            proc, _, seconds = start_agent(work, command)
            cold.append(seconds)
            stop(proc)

        proc, url, _ = start_agent(work, command)
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(50):
                    http.get("/")
                health = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    http.get("/")
                    health.append(time.perf_counter() - t)
                lags = []
                for _ in range(args.runs):
                    run_id = http.post("/runs", json={"mode": "test"}, headers=AUTH).json()["id"]
                    r = http.get(f"/runs/{run_id}", params={"wait": 30}, headers=AUTH)
                    answered = time.time()
                    assert r.json()["status"] == "succeeded", r.text
                    lags.append(answered - float(stamp.read_text()))
            flooded, kept, all_closed = flood(url, args.flood)
        finally:
            stop(proc)

    rows = [
        (
            "cold start (exec to first 200)",
            f"{statistics.median(cold) * 1000:.0f} ms median",
            f"{max(cold) * 1000:.0f} ms max",
            "< 1500 ms",
        ),
        (
            "GET / latency",
            f"{pct(health, 0.5) * 1000:.2f} ms p50",
            f"{pct(health, 0.99) * 1000:.2f} ms p99",
            "p50 < 2 ms",
        ),
        (
            "job exit to long-poll answer",
            f"{statistics.median(lags) * 1000:.1f} ms median",
            f"{max(lags) * 1000:.1f} ms max",
            "< 50 ms",
        ),
        (
            f"GET / beside {args.flood} idle conns",
            f"{pct(flooded, 0.5) * 1000:.1f} ms p50",
            f"{max(flooded) * 1000:.1f} ms max",
            "answers",
        ),
        (
            "idle connections kept / all closed",
            f"{kept} kept",
            f"{all_closed:.1f} s",
            "<= 500 / ~5 s",
        ),
    ]
    print(f"{'measure':34} {'typical':>18} {'worst':>14}  target")
    for name, typical, worst, target in rows:
        print(f"{name:34} {typical:>18} {worst:>14}  {target}")
    print(
        f"({args.starts} starts, {args.requests} requests, {args.runs} runs; "
        f"{os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()

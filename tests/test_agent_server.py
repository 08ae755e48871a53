"""The agent as operators run it: `uvicorn fastapi_app:app`, driven over HTTP on loopback."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import AUTH, REPO, TOKEN, finished, free_port, pid_alive, wait_until

pytestmark = pytest.mark.e2e


def test_real_uvicorn_serves_health_runs_long_poll_and_log(live_agent):
    live = live_agent(JOB_COMMAND="echo hello from the job")
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.get("/").json()["status"] == "ok"
        r = http.post("/runs", json={"mode": "test"}, headers=AUTH)
        assert r.status_code == 202, r.text
        run = finished(http, r.json()["id"])
        assert run["status"] == "succeeded"
        assert "hello from the job" in http.get(f"/runs/{run['id']}/log", headers=AUTH).text
        assert http.post("/runs", json={"mode": "run"}).status_code == 401


def test_agent_refuses_to_start_without_a_usable_token(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(REPO),
        "fastapi_app:app",
        "--port",
        "1",
    ]
    base = {k: v for k, v in os.environ.items() if k != "AGENT_TOKEN"}
    for env, expected in [
        (base, "AGENT_TOKEN is required"),
        ({**base, "AGENT_TOKEN": "short-secret"}, "AGENT_TOKEN must be at least 16 characters"),
    ]:
        proc = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"agent: configuration error: {expected}"
        assert "short-secret" not in proc.stderr, "the token value must never be printed"


def test_settings_come_from_dotenv_and_the_environment_wins(live_agent, tmp_path):
    out = tmp_path / "seen"
    (tmp_path / ".env").write_text(
        f"AGENT_TOKEN={TOKEN}\n"
        f'JOB_COMMAND=echo "$EXCHANGE_KEY $REGION_NAME" > {out}\n'
        "EXCHANGE_KEY=key-from-dotenv\n"
        "REGION_NAME=from-dotenv\n"
    )
    live = live_agent(start=False, REGION_NAME="from-environment")
    live.env.pop("AGENT_TOKEN")
    live.start()
    with httpx.Client(base_url=live.url, timeout=30) as http:
        run_id = http.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
        assert finished(http, run_id)["status"] == "succeeded"
    assert out.read_text().strip() == "key-from-dotenv from-environment"


def test_restart_after_a_crash_marks_the_run_interrupted_and_ends_its_job(live_agent, tmp_path):
    pidfile, cleaned = tmp_path / "job.pid", tmp_path / "cleaned-up"
    job = f"trap 'echo yes > {cleaned}; exit 1' TERM; echo $$ > {pidfile}; sleep 300 & wait"
    live = live_agent(JOB_COMMAND=job)
    with httpx.Client(base_url=live.url, timeout=30) as http:
        run_id = http.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the job")
        job_pid = int(pidfile.read_text())
        live.kill()
        assert pid_alive(job_pid), "the job lives in its own process group, past the crash"
        live.start()
        run = http.get(f"/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "interrupted"
    assert run["error"] == "the agent stopped during the run"
    wait_until(lambda: not pid_alive(job_pid), 5, "the orphaned job to be ended")
    assert cleaned.exists(), "the orphaned job got SIGTERM and a chance to clean up"


def test_stopping_the_agent_ends_the_job_and_records_the_interruption(live_agent, tmp_path):
    pidfile = tmp_path / "job.pid"
    live = live_agent(JOB_COMMAND=f"echo $$ > {pidfile}; sleep 300")
    with httpx.Client(base_url=live.url, timeout=30) as http:
        run_id = http.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the job")
        live.stop()
        assert not pid_alive(int(pidfile.read_text())), "the job outlived the agent's stop"
        live.start()
        assert http.get(f"/runs/{run_id}", headers=AUTH).json()["status"] == "interrupted"


def quick_start(page: str) -> str:
    """The first bash block under docs' "start it locally" heading, as a user would paste it."""
    text = (REPO / page).read_text()
    return text.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_quick_start_pasted_whole_into_a_shell_works_every_time():
    block = quick_start("docs/agent.md")
    assert quick_start("docs/ko/agent.md").splitlines()[0] == block.splitlines()[0]
    assert "\nPORT=8000\n" in block, "the test moves the block to a free port"
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_TOKEN", "STATE_DIR")}
    env.pop("IDLE_SHUTDOWN", None)
    ids = []
    for _ in range(2):  # a second paste must start a new run, not get the first one back
        port = free_port()
        r = subprocess.run(
            ["bash", "-c", block.replace("\nPORT=8000\n", f"\nPORT={port}\n")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        out = r.stdout
        assert r.returncode == 0, r.stderr
        health, test, record, *log_and_list = out.splitlines()
        assert health.startswith('{"status":"ok"'), out
        assert test.startswith('{"status":"ok"') and '"mode":"test"' in test, out
        assert '"status":"succeeded"' in record and '"mode":"run"' in record, out
        assert "trading (dry run: 0)\ndone\n" in out, "the run's log"
        assert log_and_list[-1].startswith('{"data":[{"id"'), out
        assert "idle shutdown off" in r.stderr, "the agent says its idle shutdown is off"
        assert "Traceback" not in r.stderr, r.stderr
        ids.append(record.split('"id":"', 1)[1][:32])
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)  # the agent was stopped
    assert len(set(ids)) == 2, f"the second paste got the first run back: {ids}"

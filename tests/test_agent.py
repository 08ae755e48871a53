"""The agent's HTTP API, in-process against the real app (fastapi_app's create_app)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import AUTH, TOKEN, finished, pid_alive, wait_until


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# -- health and auth -------------------------------------------------------------------------


def test_health_is_open_and_says_nothing_secret(agent):
    client = agent(job_command="true")
    r = client.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body == {"status": "ok", "version": body["version"], "busy": False}
    assert body["version"] not in ("", "unknown"), "version should come from pyproject.toml"
    assert TOKEN not in r.text


BAD_TOKENS = {
    "missing": {},
    "wrong": {"Authorization": "Bearer not-the-token-at-all-xx"},
    "near miss (one char short)": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "near miss (one char more)": {"Authorization": f"Bearer {TOKEN}x"},
    "near miss (last char changed)": {"Authorization": f"Bearer {TOKEN[:-1]}0"},
    "wrong scheme": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("headers", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/runs", {"mode": "run"}), ("GET", "/run", None), ("GET", "/test", None)],
)
def test_bad_token_gets_401_and_runs_nothing(agent, tmp_path, headers, method, path, body):
    marker = tmp_path / "ran"
    client = agent(job_command=f"echo ran >> {marker}")
    r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"] == "missing or invalid bearer token"
    runs = client.get("/runs", headers=AUTH).json()
    assert runs["count"] == 0, "a rejected request must not create a run"
    assert not marker.exists(), "the job ran without a valid token"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/runs"),
        ("GET", "/runs/" + "a" * 32),
        ("GET", "/runs/" + "a" * 32 + "/log"),
        ("POST", "/runs/" + "a" * 32 + "/cancel"),
    ],
)
def test_every_route_but_health_needs_the_token(agent, method, path):
    client = agent(job_command="true")
    r = client.request(method, path)
    assert r.status_code == 401, f"{method} {path} answered {r.status_code} without a token"


# -- running ---------------------------------------------------------------------------------


def test_job_output_lands_in_the_run_log(agent):
    client = agent(job_command="echo to-stdout; echo to-stderr >&2")
    r = client.post("/runs", json={"mode": "run"}, headers=AUTH)
    assert r.status_code == 202, r.text
    run = finished(client, r.json()["id"])
    assert run["status"] == "succeeded"
    assert run["exit_code"] == 0
    assert run["finished_at"] is not None
    log = client.get(f"/runs/{run['id']}/log", headers=AUTH)
    assert log.status_code == 200
    assert log.headers["content-type"].startswith("text/plain")
    assert "to-stdout" in log.text and "to-stderr" in log.text


def test_exit_code_and_error_reach_the_record(agent):
    client = agent(job_command="echo 'order rejected: insufficient margin' >&2; exit 3")
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    assert run["status"] == "failed"
    assert run["exit_code"] == 3
    assert "exit code 3" in run["error"]
    assert "insufficient margin" in run["error"], "the job's last line gives the error context"


def test_test_mode_exports_dry_run_and_run_mode_does_not(agent, tmp_path):
    out = tmp_path / "dry"
    client = agent(job_command=f'echo "DRY_RUN=${{DRY_RUN:-unset}}" >> {out}')
    for mode in ("test", "run"):
        run_id = client.post("/runs", json={"mode": mode}, headers=AUTH).json()["id"]
        assert finished(client, run_id)["status"] == "succeeded"
    assert out.read_text().splitlines() == ["DRY_RUN=1", "DRY_RUN=unset"]


def test_job_sees_dotenv_values_but_not_the_agent_token(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    out = tmp_path / "env"
    client = agent(
        job_env={"EXCHANGE_KEY": "from-dotenv"},
        job_command=f'echo "key=$EXCHANGE_KEY token=${{AGENT_TOKEN:-none}}" > {out}',
    )
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    assert finished(client, run_id)["status"] == "succeeded"
    assert out.read_text().strip() == "key=from-dotenv token=none"


def test_unset_job_command_fails_the_run_with_what_to_set(agent, monkeypatch):
    monkeypatch.delenv("JOB_COMMAND", raising=False)
    client = agent(job_command=None)
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    assert run["status"] == "failed"
    assert run["exit_code"] == 2
    assert "JOB_COMMAND is not set" in run["error"]


def test_timeout_kills_a_job_that_ignores_sigterm(agent, tmp_path):
    pidfile = tmp_path / "pid"
    client = agent(
        job_command=f"trap '' TERM; echo $$ > {pidfile}; sleep 60", job_timeout=1, kill_grace=0.5
    )
    started = time.monotonic()
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    run = finished(client, run_id)
    assert run["status"] == "failed"
    assert "timed out after 1 s (JOB_TIMEOUT)" in run["error"]
    assert time.monotonic() - started < 20, "the job outlived its timeout by far"
    pid = int(pidfile.read_text())
    assert not pid_alive(pid), "the job that ignored SIGTERM is still alive"


def test_cancel_ends_the_whole_process_group_including_grandchildren(agent, tmp_path):
    gc = tmp_path / "grandchild"
    client = agent(job_command=f"sleep 300 & echo $! > {gc}; wait")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    wait_until(lambda: gc.exists() and gc.read_text().strip() != "", 10, "the grandchild")
    grandchild = int(gc.read_text())
    assert pid_alive(grandchild)
    r = client.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["error"] == "cancelled by request"
    wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to die")
    assert client.get("/").json()["busy"] is False


def test_cancel_of_an_ended_run_changes_nothing(agent):
    client = agent(job_command="true")
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    r = client.post(f"/runs/{run['id']}/cancel", headers=AUTH)
    assert r.status_code == 200
    assert r.json() == run


def test_leftover_background_processes_end_with_the_job(agent, tmp_path):
    gc = tmp_path / "bg"
    client = agent(job_command=f"sleep 300 > /dev/null 2>&1 & echo $! > {gc}")
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    assert run["status"] == "succeeded"
    wait_until(lambda: not pid_alive(int(gc.read_text())), 5, "the leftover to be killed")


# -- one run at a time, idempotency ------------------------------------------------------------


def test_second_run_while_busy_gets_409_with_the_running_id(agent, tmp_path):
    marker = tmp_path / "runs"
    client = agent(job_command=f"echo x >> {marker}; sleep 2")
    first = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()
    assert client.get("/").json()["busy"] is True
    for method, path, body in [
        ("POST", "/runs", {"mode": "test"}),
        ("GET", "/run", None),
        ("GET", "/test", None),
    ]:
        r = client.request(method, path, json=body, headers=AUTH)
        assert r.status_code == 409, f"{method} {path}: {r.text}"
        assert r.json()["run_id"] == first["id"]
    assert finished(client, first["id"])["status"] == "succeeded"
    assert count_lines(marker) == 1, "the job must have run exactly once"


def test_same_idempotency_key_returns_the_same_run_and_runs_once(agent, tmp_path):
    marker = tmp_path / "runs"
    client = agent(job_command=f"echo x >> {marker}; sleep 0.5")
    key = {"Idempotency-Key": "exec-abc/0", **AUTH}
    first = client.post("/runs", json={"mode": "run"}, headers=key)
    assert first.status_code == 202
    while_running = client.post("/runs", json={"mode": "run"}, headers=key)
    assert while_running.status_code == 200
    assert while_running.json()["id"] == first.json()["id"]
    finished(client, first.json()["id"])
    after = client.post("/runs", json={"mode": "run"}, headers=key)
    assert after.status_code == 200
    assert after.json()["id"] == first.json()["id"]
    assert after.json()["status"] == "succeeded"
    assert count_lines(marker) == 1, "a replayed key must not run the job again"


def test_a_failed_run_is_returned_to_its_key_and_not_run_again(agent, tmp_path):
    """A job that failed after it started may have placed orders: a retried task gets the failed
    run back, and the job does not start again."""
    marker = tmp_path / "runs"
    client = agent(job_command=f"echo x >> {marker}; exit 1")
    key = {"Idempotency-Key": "exec-def/0", **AUTH}
    first = client.post("/runs", json={"mode": "run"}, headers=key).json()
    assert finished(client, first["id"])["status"] == "failed"
    retry = client.post("/runs", json={"mode": "run"}, headers=key)
    assert retry.status_code == 200
    assert retry.json()["id"] == first["id"] and retry.json()["status"] == "failed"
    assert count_lines(marker) == 1


def test_a_failed_run_runs_again_with_rerun_failed_and_a_success_never_does(agent, tmp_path):
    marker, once = tmp_path / "runs", tmp_path / "failed-once"
    client = agent(job_command=f"echo x >> {marker}; [ -e {once} ] || {{ touch {once}; exit 1; }}")
    key = {"Idempotency-Key": "exec-ghi/0", **AUTH}
    first = client.post("/runs", json={"mode": "run"}, headers=key).json()
    assert finished(client, first["id"])["status"] == "failed"
    body = {"mode": "run", "rerun_failed": True}
    retry = client.post("/runs", json=body, headers=key)
    assert retry.status_code == 202
    assert retry.json()["id"] != first["id"]
    assert finished(client, retry.json()["id"])["status"] == "succeeded"
    again = client.post("/runs", json=body, headers=key)
    assert again.status_code == 200 and again.json()["id"] == retry.json()["id"]
    assert count_lines(marker) == 2


def test_the_job_gets_its_key_and_slot_in_its_environment(agent, tmp_path):
    seen = tmp_path / "env"
    client = agent(job_command=f'echo "$RUN_KEY|${{RUN_SLOT-unset}}" >> {seen}')
    key = {"Idempotency-Key": "2026-12-02T00:00Z/0", **AUTH}
    body = {"mode": "run", "run_slot": "2026-12-02T09:00:00+09:00"}
    finished(client, client.post("/runs", json=body, headers=key).json()["id"])
    unkeyed = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()
    finished(client, unkeyed["id"])
    assert seen.read_text().splitlines() == [
        "2026-12-02T00:00Z/0|2026-12-02T09:00:00+09:00",
        f"{unkeyed['id']}|unset",
    ]


def test_a_run_slot_that_is_not_an_iso_time_is_refused(agent):
    client = agent(job_command="true")
    r = client.post("/runs", json={"mode": "run", "run_slot": "tomorrow"}, headers=AUTH)
    assert r.status_code == 422, r.text


# -- long poll -------------------------------------------------------------------------------


def test_long_poll_answers_when_the_job_ends_not_when_the_wait_expires(agent, tmp_path):
    end = tmp_path / "end"
    client = agent(job_command=f"sleep 1; python3 -c 'import time; print(time.time())' > {end}")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    r = client.get(f"/runs/{run_id}", params={"wait": 30}, headers=AUTH)
    answered = time.time()
    assert r.json()["status"] == "succeeded"
    lag = answered - float(end.read_text())
    assert lag < 5, f"long poll answered {lag:.2f} s after the job ended (wait was 30 s)"


def test_long_poll_returns_the_running_record_when_the_wait_expires(agent):
    client = agent(job_command="sleep 5")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    r = client.get(f"/runs/{run_id}", params={"wait": 0.3}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "running"


def test_runs_are_listed_newest_first(agent):
    client = agent(job_command="true")
    ids = []
    for mode in ("run", "test", "run"):
        ids.append(client.post("/runs", json={"mode": mode}, headers=AUTH).json()["id"])
        finished(client, ids[-1])
    listed = client.get("/runs", headers=AUTH).json()
    assert listed["count"] == 3
    assert [r["id"] for r in listed["data"]] == ids[::-1]
    assert [r["id"] for r in client.get("/runs?limit=1", headers=AUTH).json()["data"]] == ids[-1:]


# -- the seed's synchronous calls ------------------------------------------------------------


def test_sync_run_answers_200_ok_when_the_job_succeeds(agent):
    client = agent(job_command="sleep 0.2")
    r = client.get("/run", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["run"]["status"] == "succeeded"
    assert r.json()["run"]["mode"] == "run"


def test_sync_test_answers_500_error_when_the_job_fails(agent):
    client = agent(job_command="echo 'cannot reach exchange' >&2; exit 4")
    r = client.get("/test", headers=AUTH)
    assert r.status_code == 500
    assert r.json()["status"] == "error"
    assert "cannot reach exchange" in r.json()["detail"]
    assert r.json()["run"]["mode"] == "test"


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "headers", "code", "detail"),
    [
        (b'{"mode": "live"}', {}, 422, "mode"),
        (b"{bad json", {}, 422, "Invalid JSON"),
        (b"", {}, 422, "body must be JSON"),
        (b"[1, 2]", {}, 422, "invalid request"),
        (b'{"mode": "run"}', {"Idempotency-Key": "x" * 201}, 400, "Idempotency-Key"),
        (b'{"mode": "run", "pad": "' + b"x" * 20000 + b'"}', {}, 413, "too large"),
    ],
    ids=["unknown mode", "malformed json", "empty body", "not an object", "long key", "oversized"],
)
def test_bad_run_requests_get_a_4xx_and_start_nothing(agent, content, headers, code, detail):
    client = agent(job_command="true")
    r = client.post(
        "/runs", content=content, headers={**AUTH, "Content-Type": "application/json", **headers}
    )
    assert r.status_code == code, r.text
    assert detail in r.json()["detail"]
    assert client.get("/runs", headers=AUTH).json()["count"] == 0


def test_oversized_chunked_body_gets_413(agent):
    client = agent(job_command="true")

    def chunks():
        for _ in range(40):
            yield b"x" * 1024

    r = client.post("/runs", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert client.get("/runs", headers=AUTH).json()["count"] == 0


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/runs/" + "0" * 32, 404),
        ("/runs/" + "0" * 32 + "/log", 404),
        ("/runs/" + "0" * 32 + "/cancel", 404),
        ("/runs/not-an-id", 400),
        ("/runs/..%2F..%2Fetc%2Fpasswd/log", 404),  # no route: never a file path
        ("/runs/" + "A" * 32, 400),
        ("/runs/" + "0" * 32 + "?wait=-1", 422),
        ("/runs/" + "0" * 32 + "?wait=soon", 422),
        ("/runs?limit=0", 422),
    ],
)
def test_unknown_or_malformed_run_ids_get_a_clear_4xx(agent, path, code):
    client = agent(job_command="true")
    method = "POST" if path.endswith("/cancel") else "GET"
    r = client.request(method, path, headers=AUTH)
    assert r.status_code == code, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


# -- the idle safety net ---------------------------------------------------------------------


def test_idle_shutdown_runs_the_shutdown_command_after_the_idle_period(agent, tmp_path):
    fired = tmp_path / "fired"
    agent(job_command="true", idle_shutdown=0.5, shutdown_command=f"echo off >> {fired}")
    wait_until(fired.exists, 10, "SHUTDOWN_COMMAND to run")


def test_idle_shutdown_never_fires_during_a_run(agent, tmp_path):
    fired = tmp_path / "fired"
    client = agent(
        job_command="sleep 2.5", idle_shutdown=0.5, shutdown_command=f"echo off >> {fired}"
    )
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    run = finished(client, run_id)
    assert run["status"] == "succeeded"
    assert not fired.exists(), "idle shutdown fired while a run was going"
    wait_until(fired.exists, 10, "SHUTDOWN_COMMAND after the run ended")


def test_authenticated_requests_keep_the_agent_awake(agent, tmp_path):
    fired = tmp_path / "fired"
    client = agent(job_command="true", idle_shutdown=1.0, shutdown_command=f"echo off >> {fired}")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert client.get("/runs", headers=AUTH).status_code == 200
        time.sleep(0.1)
    assert not fired.exists(), "idle shutdown fired although authenticated requests kept coming"


# -- following a run's log ----------------------------------------------------------------------


def test_following_a_log_from_an_offset_gives_new_bytes_as_they_are_written(agent, tmp_path):
    go = tmp_path / "go"
    client = agent(job_command=f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    r = client.get(f"/runs/{run_id}/log", params={"offset": 0, "wait": 10}, headers=AUTH)
    assert (r.status_code, r.text) == (200, "first\n")
    assert r.headers["x-run-status"] == "running"
    assert r.headers["x-next-offset"] == "6" and r.headers["x-log-skipped"] == "0"
    go.touch()
    seen, offset, status = "", 6, "running"
    while status == "running":
        r = client.get(f"/runs/{run_id}/log", params={"offset": offset, "wait": 10}, headers=AUTH)
        seen += r.text
        offset, status = int(r.headers["x-next-offset"]), r.headers["x-run-status"]
    assert seen == "second\n", "each byte once, in order"
    assert status == "succeeded"


def test_a_held_log_request_answers_when_the_run_ends_not_when_the_wait_expires(agent):
    client = agent(job_command="sleep 1")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    started = time.monotonic()
    r = client.get(f"/runs/{run_id}/log", params={"offset": 0, "wait": 30}, headers=AUTH)
    assert r.headers["x-run-status"] == "succeeded" and r.text == ""
    assert time.monotonic() - started < 15, "held for the whole wait"


@pytest.mark.parametrize(("offset", "code"), [(10_000, 416), (-1, 422), ("x", 422)])
def test_a_bad_log_offset_gets_a_4xx(agent, offset, code):
    client = agent(job_command="echo hi")
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    r = client.get(f"/runs/{run['id']}/log", params={"offset": offset}, headers=AUTH)
    assert r.status_code == code, r.text


def test_following_from_bytes_no_longer_kept_skips_to_what_is_and_says_so(agent):
    client = agent(
        job_command="python3 -c 'for i in range(3001): print(99 * \"y\")'",
        log_max_bytes=64 * 1024,
    )
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    r = client.get(f"/runs/{run['id']}/log", params={"offset": 0}, headers=AUTH)
    skipped = int(r.headers["x-log-skipped"])
    assert skipped > 0 and "\0" not in r.text
    assert int(r.headers["x-next-offset"]) == skipped + len(r.content) == 3001 * 100

"""The agent under faults and abuse (issue 11): the job's grace and every process it starts, a
full disk, a second agent on the same state, body limits, idempotency keys used twice,
closed docs, and token hygiene. In-process against the real app."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time

import httpx
import pytest
from pydantic import ValidationError

from agent.api import BodySizeLimit
from agent.settings import Settings, describe_error
from agent.store import StateDirBusy
from tests.conftest import AUTH, TOKEN, finished, pid_alive, wait_until

# -- the job's grace and its processes -------------------------------------------------------

CLEAN_UP_SLOWLY = textwrap.dedent("""\
    import pathlib, signal, sys, time
    def close_orders(*_):
        time.sleep(1.5)
        pathlib.Path(sys.argv[2]).write_text("orders closed")
        sys.exit(0)
    signal.signal(signal.SIGTERM, close_orders)
    pathlib.Path(sys.argv[1]).write_text("ready")
    time.sleep(300)
    """)


def test_a_cancelled_job_gets_kill_grace_to_clean_up_under_sh(agent, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(CLEAN_UP_SLOWLY)
    ready, closed = tmp_path / "ready", tmp_path / "closed"
    # sh stays the job's parent (dash dies at once on SIGTERM): the grace must reach the child
    client = agent(job_command=f"python3 {script} {ready} {closed}; echo after", kill_grace=8)
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    wait_until(ready.exists, 20, "the job's handler to be in place")
    r = client.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert r.json()["status"] == "cancelled"
    assert closed.exists(), "the job was killed in the middle of its clean-up"


def test_after_kill_grace_what_is_left_is_killed(agent, tmp_path):
    pidfile = tmp_path / "pid"
    client = agent(job_command=f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 300'; true")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the job")
    started = time.monotonic()
    assert client.post(f"/runs/{run_id}/cancel", headers=AUTH).json()["status"] == "cancelled"
    assert time.monotonic() - started < 10, "cancel waited far past KILL_GRACE=1"
    assert not pid_alive(int(pidfile.read_text()))


def test_processes_that_leave_the_group_end_with_the_run(agent, tmp_path):
    escaped, forked = tmp_path / "setsid", tmp_path / "double-fork"
    job = f"setsid sleep 300 & echo $! > {escaped}; (sleep 300 & echo $! > {forked}); exit 0"
    client = agent(job_command=job)
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    assert run["status"] == "succeeded"
    for path in (escaped, forked):
        pid = int(path.read_text())
        wait_until(lambda p=pid: not pid_alive(p), 5, f"{path.name} process {pid} to end")


# -- a full disk ------------------------------------------------------------------------------


class FullDisk:
    """Makes the store's writes fail as SQLite does on a full disk, until `free()`."""

    def __init__(self, store, monkeypatch) -> None:
        self.full = True
        for name in ("finish", "create"):
            real = getattr(store, name)

            def failing(*args, _real=real, **kwargs):
                if self.full:
                    raise sqlite3.OperationalError("database or disk is full")
                return _real(*args, **kwargs)

            monkeypatch.setattr(store, name, failing)

    def free(self) -> None:
        self.full = False


def test_a_full_disk_fails_the_run_frees_the_agent_and_is_written_when_space_is_back(
    agent, tmp_path, monkeypatch
):
    client = agent(job_command="echo 'traded'; sleep 0.5")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    disk = FullDisk(client.app.state.store, monkeypatch)
    run = finished(client, run_id)
    assert run["status"] == "failed"
    assert "could not record the run's end" in run["error"]
    assert "database or disk is full" in run["error"] and "succeeded" in run["error"]
    assert client.get("/").json()["busy"] is False, "the agent is wedged on the run"
    refused = client.post("/runs", json={"mode": "run"}, headers=AUTH)
    assert refused.status_code == 503, refused.text
    assert "free space on the VM's disk" in refused.json()["detail"]
    disk.free()
    db = tmp_path / "state" / "runs.sqlite3"

    def recorded() -> str:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]

    wait_until(lambda: recorded() == "failed", 10, "the run's end to be written")
    again = client.post("/runs", json={"mode": "run"}, headers=AUTH)
    assert again.status_code == 202, "new runs work once space is back"
    assert finished(client, again.json()["id"])["status"] == "succeeded"


def test_cancel_works_while_the_disk_is_full(agent, monkeypatch):
    client = agent(job_command="sleep 300")
    run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    FullDisk(client.app.state.store, monkeypatch)
    r = client.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "failed" and "cancelled" in r.json()["error"]
    assert client.get("/").json()["busy"] is False


# -- one agent per STATE_DIR -------------------------------------------------------------------


def test_a_second_agent_on_the_same_state_dir_refuses_and_touches_nothing(agent, tmp_path):
    first = agent(job_command="sleep 2; echo 'first agent job done'")
    run_id = first.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
    with pytest.raises(StateDirBusy, match=r"another agent .* is using STATE_DIR"):
        agent(job_command="true")
    assert finished(first, run_id)["status"] == "succeeded", "the first agent's run was touched"


# -- bodies, keys, docs -----------------------------------------------------------------------


def body_limit(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """(status, bytes the app received) for one request through BodySizeLimit(1 KiB)."""
    got = {"status": 0, "received": -1}

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        got["received"] = len(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def drive() -> None:
        messages = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                got["status"] = message["status"]

        scope = {"type": "http", "method": "POST", "path": "/runs", "headers": headers}
        await BodySizeLimit(app, 1024)(scope, receive, send)

    asyncio.run(drive())
    return got["status"], got["received"]


def test_a_small_content_length_with_a_chunked_body_cannot_bypass_the_limit():
    headers = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    status, received = body_limit(headers, [b"x" * 512] * 8)
    assert status == 413
    assert received == -1, "the handler saw the oversized body"


def test_a_body_within_the_limit_reaches_the_handler_whole():
    status, received = body_limit([(b"content-length", b"900")], [b"x" * 450, b"y" * 450])
    assert (status, received) == (200, 900)


def test_an_idempotency_key_reused_for_another_mode_is_refused(agent, tmp_path):
    marker = tmp_path / "runs"
    client = agent(job_command=f'echo "$DRY_RUN" >> {marker}')
    key = {"Idempotency-Key": "exec-7/0", **AUTH}
    first = client.post("/runs", json={"mode": "test"}, headers=key)
    finished(client, first.json()["id"])
    r = client.post("/runs", json={"mode": "run"}, headers=key)
    assert r.status_code == 422, r.text
    assert f"was used for a test run ({first.json()['id']})" in r.json()["detail"]
    assert marker.read_text().splitlines() == ["1"], "the real run must not start silently"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_docs_and_the_openapi_schema_are_not_served(agent, path):
    client = agent(job_command="true")
    assert client.get(path).status_code == 404
    assert client.get(path, headers=AUTH).status_code == 404


# -- token hygiene -----------------------------------------------------------------------------


def test_no_spelling_of_the_token_reaches_the_job(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("agent_token", TOKEN)
    monkeypatch.setenv("Agent_Token", TOKEN)
    out = tmp_path / "env"
    client = agent(job_command=f"env > {out}", job_env={"AGENT_TOKEN": TOKEN})
    finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    assert TOKEN not in out.read_text(), "the job's environment holds the agent's token"


@pytest.mark.parametrize(
    "token", [f" {TOKEN}", f"{TOKEN}\n", f"{TOKEN[:8]} {TOKEN[8:]}", f"{TOKEN}é"]
)
def test_a_token_that_can_never_authenticate_is_refused_at_start_up(token, tmp_path):
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, agent_token=token, state_dir=tmp_path)  # type: ignore[call-arg]
    line = describe_error(info.value)
    assert line.startswith("AGENT_TOKEN must be printable ASCII with no spaces"), line
    assert token.strip() not in line, "the message must not echo the token"


# -- the disk over months ---------------------------------------------------------------------

PRINT_3_MB = 'python3 -c \'for i in range(30000): print(f"line {i:06d} " + "x" * 89)\''


def test_a_long_log_keeps_its_end_and_no_more_than_log_max_bytes_on_disk(agent, tmp_path):
    cap = 256 * 1024
    client = agent(job_command=PRINT_3_MB, log_max_bytes=cap)
    run = finished(client, client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"])
    assert run["status"] == "succeeded"
    log = tmp_path / "state" / "logs" / f"{run['id']}.log"
    assert log.stat().st_size == 30000 * 102, "offsets stay: the size is what the job wrote"
    on_disk = log.stat().st_blocks * 512
    assert on_disk <= cap + 64 * 1024, f"{on_disk} bytes on disk for a {cap}-byte cap"
    text = client.get(f"/runs/{run['id']}/log", headers=AUTH).text
    assert text.startswith("[… the first "), "the answer says the start is not kept"
    assert text.rstrip().endswith("line 029999 " + "x" * 89), "the end of the log is kept"
    assert "\0" not in text


def test_old_runs_and_their_logs_are_pruned_by_count_and_age(agent, tmp_path):
    client = agent(job_command="echo hi", keep_runs=3, keep_days=30)
    store = client.app.state.store
    ancient = store.create("a" * 32, "run", None)
    store.finish(ancient.id, "succeeded", 0, None)
    with sqlite3.connect(tmp_path / "state" / "runs.sqlite3") as db:
        db.execute(
            "UPDATE runs SET started_at = '2020-01-01T00:00:00.000Z' WHERE id = ?", (ancient.id,)
        )
    store.log_path(ancient.id).write_text("old\n")
    ids = []
    for _ in range(4):
        r = client.post("/runs", json={"mode": "run"}, headers=AUTH)
        ids.append(finished(client, r.json()["id"])["id"])
    listed = [r["id"] for r in client.get("/runs", headers=AUTH).json()["data"]]
    assert listed == ids[::-1][:3], "the newest KEEP_RUNS runs are kept, newest first"
    logs = sorted(p.stem for p in (tmp_path / "state" / "logs").iterdir())
    assert logs == sorted(ids[1:]), "the logs of pruned runs are gone too"


# -- one SIGTERM per process, whoever stops the job (issue 26, item 3) --------------------------

COUNT_SIGTERMS = textwrap.dedent("""\
    import os, pathlib, signal, subprocess, sys, time
    handled, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    def close(*_):
        with handled.open("a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.3)
        sys.exit(0)
    signal.signal(signal.SIGTERM, close)
    if len(sys.argv) == 3:  # the job starts a helper in a session of its own, as some do
        subprocess.Popen([sys.executable, *sys.argv, "helper"], start_new_session=True)
    ready.write_text(ready.read_text() + "x" if ready.exists() else "x")
    while True:
        time.sleep(1)
    """)


def sigterms_by_process(handled) -> dict[str, int]:
    lines = handled.read_text().splitlines() if handled.exists() else []
    return {pid: lines.count(pid) for pid in set(lines)}


def test_each_process_of_a_cancelled_job_gets_one_sigterm_every_time(agent, tmp_path):
    """The cancel signals the run's process group, then the run's processes outside it: a
    process in the group is not signalled twice (seen: [1, 2, 2, 2, 2] over five cancels)."""
    script = tmp_path / "job.py"
    script.write_text(COUNT_SIGTERMS)
    client = agent(job_command=f"python3 -u {script} {tmp_path}/handled {tmp_path}/ready")
    for n in range(5):
        handled, ready = tmp_path / "handled", tmp_path / "ready"
        handled.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
        run_id = client.post("/runs", json={"mode": "run"}, headers=AUTH).json()["id"]
        wait_until(lambda r=ready: r.exists() and r.read_text() == "xx", 20, "job and helper")
        assert client.post(f"/runs/{run_id}/cancel", headers=AUTH).json()["status"] == "cancelled"
        counts = sigterms_by_process(handled)
        assert len(counts) == 2 and set(counts.values()) == {1}, f"cancel {n + 1}: {counts}"


def test_a_stopped_agent_gives_its_jobs_processes_one_sigterm(live_agent, tmp_path):
    """The VM's shutdown: systemd (KillMode=mixed) sends SIGTERM to the agent alone, which ends
    its run at once: one SIGTERM to each process of the job, none twice."""
    script = tmp_path / "job.py"
    script.write_text(COUNT_SIGTERMS)
    handled, ready = tmp_path / "handled", tmp_path / "ready"
    live = live_agent(JOB_COMMAND=f"python3 -u {script} {handled} {ready}")
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.post("/runs", json={"mode": "run"}, headers=AUTH).status_code == 202
        wait_until(lambda: ready.exists() and ready.read_text() == "xx", 20, "job and helper")
        live.stop()
    counts = sigterms_by_process(handled)
    assert len(counts) == 2 and set(counts.values()) == {1}, counts


# -- start_by: no new run past the slot's deadline (issue 26, item 4) ---------------------------


def test_a_new_run_after_start_by_is_refused_with_412_and_nothing_starts(agent, tmp_path):
    marker = tmp_path / "runs"
    client = agent(job_command=f"echo x >> {marker}")
    late = {"mode": "run", "start_by": "2026-01-01T00:05:00Z"}
    r = client.post("/runs", json=late, headers={"Idempotency-Key": "2026-01-01T00:00Z/0", **AUTH})
    assert r.status_code == 412, r.text
    assert "not starting a new run" in r.json()["detail"] and "start_by" in r.json()["detail"]
    assert client.get("/runs", headers=AUTH).json()["count"] == 0
    assert not marker.exists()


def test_start_by_gives_back_a_run_the_key_has_but_starts_no_new_one(agent, tmp_path):
    marker, once = tmp_path / "runs", tmp_path / "failed-once"
    client = agent(job_command=f"echo x >> {marker}; [ -e {once} ] || {{ touch {once}; exit 1; }}")
    failed_key = {"Idempotency-Key": "slot-a/0", **AUTH}
    first = client.post("/runs", json={"mode": "run"}, headers=failed_key).json()
    assert finished(client, first["id"])["status"] == "failed"
    past = "2026-01-01T00:05:00Z"
    given_back = client.post("/runs", json={"mode": "run", "start_by": past}, headers=failed_key)
    assert given_back.status_code == 200 and given_back.json()["id"] == first["id"]
    rerun = {"mode": "run", "start_by": past, "rerun_failed": True}
    refused = client.post("/runs", json=rerun, headers=failed_key)
    assert refused.status_code == 412, "a rerun of a failed run is a new run: refused too late"
    future = {"mode": "run", "start_by": "2999-01-01T00:00:00Z", "rerun_failed": True}
    again = client.post("/runs", json=future, headers=failed_key)
    assert again.status_code == 202
    assert finished(client, again.json()["id"])["status"] == "succeeded"
    assert count_runs(marker) == 2


def count_runs(marker) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


# -- an accepted run survives a hard reset (issue 26, item 13) -----------------------------------


def test_the_run_store_commits_to_the_disk_before_the_agent_answers(agent):
    """WAL with synchronous=NORMAL can lose the last commits on a power loss: a run accepted
    (202) just before a hard reset would be forgotten, and a retry would start the job again.
    FULL (2) syncs each commit before it returns."""
    client = agent(job_command="true")
    assert client.post("/runs", json={"mode": "run"}, headers=AUTH).status_code == 202
    store = client.app.state.store
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

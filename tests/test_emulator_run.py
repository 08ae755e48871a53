"""The emulator's Cloud Run jobs, driven by the real gcloud in the private network (gcloud run
calls the regional host): an execution runs the image's ENTRYPOINT as its USER in its WORKDIR
with the job's environment and secrets and Cloud Run's variables; failed attempts are retried
with the next attempt number; a timeout or a cancel is SIGTERM, then SIGKILL 10 s later."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from gcp_emulator.guests import container
from tests.harness import EmulatorProcess, needs_gcloud, needs_private_network

pytestmark = [pytest.mark.e2e, needs_gcloud, needs_private_network]

REGION = "us-central1"  # the emulator's default configuration's
IMAGE = f"{REGION}-docker.pkg.dev/demo-project/jobs/probe:1"
TASK = r"""#!/bin/bash
echo "vars $CLOUD_RUN_JOB $CLOUD_RUN_EXECUTION $CLOUD_RUN_TASK_INDEX" \
  "$CLOUD_RUN_TASK_ATTEMPT $CLOUD_RUN_TASK_COUNT"
echo "user $(id -u) in $PWD home $HOME greeting ${GREETING:-none}" \
  "secret ${SECRET_VALUE:-none} args $*"
echo '{"severity":"WARNING","message":"a structured line"}'
case "${MODE:-ok}" in
  ok) exit 0 ;;
  fail-first) [[ $CLOUD_RUN_TASK_ATTEMPT == 1 ]] && exit 0; exit 4 ;;
  hang)
    trap 'echo "got TERM"; [[ -n ${IGNORE_TERM:-} ]] || exit 143' TERM
    echo started
    while :; do sleep 0.1; done ;;
esac
"""


@pytest.fixture
def cloud(tmp_path):
    """The emulator in its private network, with the probe image built and pushed."""
    emu = EmulatorProcess(None, tmp_path / "emulator", private=True)
    context = tmp_path / "context"
    context.mkdir()
    (context / "task.sh").write_text(TASK)
    (context / "task.sh").chmod(0o755)
    (context / "Dockerfile").write_text(
        textwrap.dedent("""\
        FROM debian:12-slim
        COPY task.sh /app/task.sh
        USER 1000:1000
        WORKDIR /tmp
        ENTRYPOINT ["/app/task.sh"]
        """)
    )
    r = emu.http.post("/_emulator/images", json={"name": IMAGE, "context": str(context)})
    assert r.status_code == 200, r.text
    yield emu
    emu.stop()


def gcloud_ok(emu: EmulatorProcess, *args: str) -> str:
    r = emu.gcloud(*args, timeout=180)
    assert r.returncode == 0, f"gcloud {' '.join(args)}: {r.stderr}"
    return r.stdout


def create(emu: EmulatorProcess, name: str, *flags: str) -> None:
    gcloud_ok(emu, "run", "jobs", "create", name, f"--image={IMAGE}", f"--region={REGION}", *flags)


def executions(emu: EmulatorProcess, job: str) -> list[dict]:
    return [e for e in emu.state()["run"]["executions"] if e["job"] == job]


def log(emu: EmulatorProcess, execution: str) -> list[dict]:
    out = gcloud_ok(
        emu, "logging", "read",
        f'labels."run.googleapis.com/execution_name"="{execution}"', "--order=asc",
        "--format=json",
    )  # fmt: skip
    return json.loads(out)


def lines(entries: list[dict]) -> str:
    return "\n".join(e.get("textPayload") or e["jsonPayload"]["message"] for e in entries)


def signals(emu: EmulatorProcess) -> list[dict]:
    return [e for e in emu.journal() if e.get("event") == "run.signal"]


def test_an_execution_runs_the_images_entrypoint_with_the_jobs_settings_and_cloud_runs(cloud):
    cloud.http.post("/_emulator/secrets/probe-secret", json={"value": "first"})
    create(
        cloud, "probe", "--tasks=2", "--max-retries=0", "--set-env-vars=GREETING=hello",
        "--set-secrets=SECRET_VALUE=probe-secret:latest",
    )  # fmt: skip
    # the job runs as Compute Engine's default account, which may not read the secret yet
    refused = cloud.gcloud("run", "jobs", "execute", "probe", f"--region={REGION}", "--wait")
    assert refused.returncode != 0
    assert "Permission 'secretmanager.versions.access' denied" in refused.stderr, refused.stderr
    assert executions(cloud, "probe") == []
    gcloud_ok(
        cloud, "secrets", "add-iam-policy-binding", "probe-secret",
        "--member=serviceAccount:123456789012-compute@developer.gserviceaccount.com",
        "--role=roles/secretmanager.secretAccessor",
    )  # fmt: skip
    # a secret is read when an execution starts: the version added after the job's creation
    cloud.http.post("/_emulator/secrets/probe-secret", json={"value": "second"})
    gcloud_ok(cloud, "run", "jobs", "execute", "probe", f"--region={REGION}", "--wait")
    [execution] = executions(cloud, "probe")
    assert execution["result"] == "succeeded", execution
    name = execution["name"]
    assert name.startswith("probe-") and len(name) == len("probe-") + 5, name
    entries = log(cloud, name)
    text = lines(entries)
    for index in (0, 1):
        assert f"vars probe {name} {index} 0 2" in text, text
    home = container.home_of("1000")
    assert f"user 1000 in /tmp home {home} greeting hello secret second args \n" in text + "\n"
    structured = [
        e for e in entries if e.get("jsonPayload", {}).get("message") == "a structured line"
    ]
    assert structured and structured[0]["severity"] == "WARNING", entries
    described = json.loads(
        gcloud_ok(cloud, "run", "jobs", "executions", "describe", name, f"--region={REGION}",
                  "--format=json")
    )  # fmt: skip
    assert described["status"]["succeededCount"] == 2
    completed = {c["type"]: c["status"] for c in described["status"]["conditions"]}
    assert completed["Completed"] == "True", described["status"]


def test_a_failed_attempt_is_run_again_as_the_same_task_with_the_next_attempt_number(cloud):
    create(cloud, "flaky", "--max-retries=1", "--set-env-vars=MODE=fail-first")
    gcloud_ok(cloud, "run", "jobs", "execute", "flaky", f"--region={REGION}", "--wait")
    [execution] = executions(cloud, "flaky")
    assert [(a["index"], a["attempt"], a["outcome"]) for a in execution["attempts"]] == [
        (0, 0, "failed"),
        (0, 1, "succeeded"),
    ]
    text = lines(log(cloud, execution["name"]))
    assert f"vars flaky {execution['name']} 0 0 1" in text
    listed = gcloud_ok(cloud, "run", "jobs", "executions", "list", "--job=flaky",
                       f"--region={REGION}", "--format=value(metadata.name)")  # fmt: skip
    assert listed.split() == [execution["name"]]
    assert f"vars flaky {execution['name']} 0 1 1" in text


def test_execute_wait_fails_with_the_execution_when_its_tasks_fail(cloud):
    create(cloud, "broken", "--max-retries=0", "--set-env-vars=MODE=fail-first")
    r = cloud.gcloud("run", "jobs", "execute", "broken", f"--region={REGION}", "--wait")
    assert r.returncode != 0, r.stderr
    assert "failed" in r.stderr.lower(), r.stderr
    [execution] = executions(cloud, "broken")
    assert execution["result"] == "failed"
    assert execution["attempts"][0]["exit_code"] == 4


def test_a_task_past_its_timeout_gets_sigterm_then_sigkill_10_s_later(cloud):
    create(
        cloud, "stubborn", "--max-retries=0", "--task-timeout=3s",
        "--set-env-vars=MODE=hang,IGNORE_TERM=1",
    )  # fmt: skip
    r = cloud.gcloud("run", "jobs", "execute", "stubborn", f"--region={REGION}", "--wait")
    assert r.returncode != 0
    sent = signals(cloud)
    assert [(s["signal"], s["why"]) for s in sent] == [
        ("SIGTERM", "timeout"),
        ("SIGKILL", "timeout"),
    ]
    gap = sent[1]["time"] - sent[0]["time"]
    assert 9.5 <= gap <= 13, f"SIGKILL {gap:.1f} s after SIGTERM; Cloud Run's is 10 s"
    [execution] = executions(cloud, "stubborn")
    assert execution["result"] == "failed"
    assert "got TERM" in lines(log(cloud, execution["name"]))


def test_a_cancel_is_sigterm_and_the_execution_ends_cancelled(cloud):
    create(cloud, "cancelled", "--max-retries=3", "--set-env-vars=MODE=hang")
    gcloud_ok(cloud, "run", "jobs", "execute", "cancelled", f"--region={REGION}")
    deadline = time.monotonic() + 60
    while "started" not in lines(log(cloud, executions(cloud, "cancelled")[0]["name"])):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.5)
    name = executions(cloud, "cancelled")[0]["name"]
    gcloud_ok(cloud, "run", "jobs", "executions", "cancel", name, f"--region={REGION}", "--quiet")
    deadline = time.monotonic() + 30
    while not executions(cloud, "cancelled")[0]["done"]:
        assert time.monotonic() < deadline, "the cancelled execution did not end"
        time.sleep(0.2)
    [execution] = executions(cloud, "cancelled")
    assert execution["result"] == "cancelled"
    assert len(execution["attempts"]) == 1, "a cancelled task is not retried"
    assert [(s["signal"], s["why"]) for s in signals(cloud)] == [("SIGTERM", "cancelled")]
    assert "got TERM" in lines(log(cloud, name))


def test_execute_overrides_apply_to_that_execution_alone(cloud):
    create(cloud, "overridden", "--max-retries=0", "--set-env-vars=GREETING=hello")
    gcloud_ok(
        cloud, "run", "jobs", "execute", "overridden", f"--region={REGION}", "--wait",
        "--update-env-vars=GREETING=bonjour", "--args=one,two",
    )  # fmt: skip
    gcloud_ok(cloud, "run", "jobs", "execute", "overridden", f"--region={REGION}", "--wait")
    first, second = sorted(executions(cloud, "overridden"), key=lambda e: e["name"])
    texts = {e["name"]: lines(log(cloud, e["name"])) for e in (first, second)}
    overridden = [t for t in texts.values() if "greeting bonjour" in t]
    plain = [t for t in texts.values() if "greeting hello" in t]
    assert len(overridden) == 1 and len(plain) == 1, texts
    assert "args one two" in overridden[0] and "args one" not in plain[0]


def test_completed_executions_are_counted_by_result(cloud):
    create(cloud, "counted", "--max-retries=0", "--set-env-vars=MODE=fail-first")
    cloud.gcloud("run", "jobs", "execute", "counted", f"--region={REGION}", "--wait")
    gcloud_ok(cloud, "run", "jobs", "update", "counted", f"--region={REGION}",
              "--update-env-vars=MODE=ok")  # fmt: skip
    gcloud_ok(cloud, "run", "jobs", "execute", "counted", f"--region={REGION}", "--wait")
    points = cloud.state()["monitoring"]["points"]
    metric = "run.googleapis.com/job/completed_execution_count"
    assert points == {f"{metric},result=failed": 1, f"{metric},result=succeeded": 1}, points


def test_a_deleted_job_is_gone_and_describe_says_so(cloud):
    create(cloud, "shortlived", "--max-retries=0")
    gcloud_ok(cloud, "run", "jobs", "delete", "shortlived", f"--region={REGION}", "--quiet")
    r = cloud.gcloud("run", "jobs", "describe", "shortlived", f"--region={REGION}")
    assert r.returncode != 0 and "shortlived" in r.stderr and "not" in r.stderr.lower(), r.stderr

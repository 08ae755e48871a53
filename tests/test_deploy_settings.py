"""deploy.sh's settings and its reading of gcloud's JSON, without gcloud: a bad deploy.env is
refused before any call, naming the line or the setting; deploy.env.example holds every setting;
deploy/canonical.py reduces each resource to the fields apply compares."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

EXAMPLE = REPO / "deploy.env.example"
REQUIRED = (
    "PROJECT_ID=p-1\nREGION=asia-northeast3\nZONE=asia-northeast3-c\nREPO_URL=u\n"
    "SCHEDULE=0 9 * * 1-5\nALERT_EMAIL=ops@example.com\n"
)


@pytest.fixture
def run(tmp_path):
    """run(deploy_env_text, *args, job_env=...) -> deploy.sh with a gcloud that only notes its
    calls (a settings error must come before any)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud-calls"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 1\n')
    gcloud.chmod(0o755)

    def go(text: str | None, *args: str, job_env: str | None = "JOB_COMMAND=true\n"):
        env_file = tmp_path / "deploy.env"
        if text is not None:
            env_file.write_text(text.replace("JOB_ENV=", f"JOB_ENV_FILE={tmp_path / 'job.env'}"))
        if job_env is not None:
            (tmp_path / "job.env").write_text(job_env)
        r = subprocess.run(
            ["bash", str(REPO / "deploy.sh"), *(args or ("plan",))],
            env={
                "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
                "DEPLOY_ENV": str(env_file),
                "HOME": str(tmp_path),
            },
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        r.calls = calls.read_text().splitlines() if calls.exists() else []  # type: ignore[attr-defined]
        return r

    return go


def test_no_settings_file_says_how_to_make_one(run, tmp_path):
    r = run(None)
    assert r.returncode == 1
    assert "cp deploy.env.example deploy.env" in r.stderr and r.calls == []


def test_a_missing_required_setting_is_named(run):
    r = run("PROJECT_ID=p-1\nJOB_ENV=\n")
    assert r.returncode == 1
    assert "set REGION ZONE REPO_URL SCHEDULE" in r.stderr, r.stderr
    assert r.calls == []


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("TYPO_SETTING=1", "TYPO_SETTING is not a setting of deploy.sh"),
        ("this is not a setting", "not a KEY=value line"),
        ("BOOT_TIMEOUT=5m", "BOOT_TIMEOUT must be a whole number"),
        ("INSTANCE=My_VM", "INSTANCE 'My_VM' is not a name Google takes"),
        ("MAX_RETRIES=11", "MAX_RETRIES is at most 10"),
        ("JOB_ENV_FILE=/nonexistent/job.env", "JOB_ENV_FILE /nonexistent/job.env does not exist"),
    ],
)
def test_a_bad_setting_is_refused_before_any_gcloud_call_naming_it(run, line, words):
    r = run(REQUIRED + "JOB_ENV=\n" + line + "\n")
    assert r.returncode == 1, r.stderr
    assert words in r.stderr, r.stderr
    assert r.calls == []


def test_a_token_in_the_jobs_settings_is_refused(run):
    r = run(REQUIRED + "JOB_ENV=\n", job_env="JOB_COMMAND=true\nAGENT_TOKEN=abc\n")
    assert r.returncode == 1 and "has an AGENT_TOKEN line" in r.stderr, r.stderr
    assert "abc" not in r.stderr, "the token's value is never printed"


def test_a_value_is_taken_as_written_not_run(run, tmp_path):
    marker = tmp_path / "ran"
    r = run(REQUIRED.replace("REPO_URL=u", f'REPO_URL="$(touch {marker})"') + "JOB_ENV=\n")
    assert not marker.exists(), "a value was run by a shell"
    # it got as far as gcloud: the settings were accepted as written
    assert r.calls and r.calls[0].startswith("--quiet --project=p-1 services list"), r.calls


def test_a_bad_command_or_flag_prints_the_usage(run):
    for args in (("launch",), ("apply", "--yes"), ("destroy", "--force")):
        r = run(REQUIRED + "JOB_ENV=\n", *args)
        assert r.returncode == 2 and "Usage: ./deploy.sh plan" in r.stderr, (args, r.stderr)


def test_the_example_holds_every_setting_and_nothing_else():
    settings = (REPO / "deploy/settings.sh").read_text()
    block = re.search(r"readonly SETTINGS=\((.*?)\n\)", settings, re.S)
    assert block
    known = set(re.findall(r'"([A-Z_]+)=', block.group(1)))
    example = set(re.findall(r"^([A-Z_]+)=", EXAMPLE.read_text(), re.M))
    assert example == known


def test_the_permissions_apply_grants_are_the_ones_docs_deploy_md_states():
    from tests.chain import documented_role

    settings = (REPO / "deploy/settings.sh").read_text()
    block = re.search(r"readonly ORCHESTRATOR_PERMISSIONS=\((.*?)\n\)", settings, re.S)
    assert block
    assert sorted(block.group(1).split()) == documented_role()


# -- deploy/canonical.py -----------------------------------------------------------------------


def canonical(kind: str, data: object, *args: str) -> dict[str, str]:
    r = subprocess.run(
        [sys.executable, str(REPO / "deploy/canonical.py"), kind, *args],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def test_a_vm_is_read_for_what_apply_sets_with_the_startup_script_as_its_hash():
    vm = {
        "status": "TERMINATED",
        "machineType": "https://compute.googleapis.com/compute/v1/projects/p/zones/z/machineTypes/e2-small",
        "tags": {"items": ["vm-job-agent", "other"]},
        "labels": {"vm-job-owner": "exec-1"},
        "serviceAccounts": [{"email": "a@p.iam.gserviceaccount.com", "scopes": ["s2", "s1"]}],
        "scheduling": {"maxRunDuration": {"seconds": "4140"}, "instanceTerminationAction": "STOP"},
        "metadata": {"items": [{"key": "startup-script", "value": "echo hi\n"},
                               {"key": "git-ref", "value": "main"}]},
        "networkInterfaces": [{"network": "x/networks/default"}],
    }  # fmt: skip
    got = canonical("vm", vm)
    assert got["machine-type"] == "e2-small" and got["owner"] == "exec-1"
    assert got["tag.vm-job-agent"] == got["tag.other"] == "yes"
    assert got["scopes"] == "s1,s2" and got["max-run-duration"] == "4140"
    assert got["metadata.git-ref"] == "main"
    assert got["metadata.startup-script"].startswith("sha256:") and "echo" not in str(got)
    assert got["access-configs"] == "0"


def test_a_cloud_run_job_is_read_with_its_env_and_its_secret_apart():
    job = {"spec": {"template": {"spec": {"taskCount": 1, "template": {"spec": {
        "serviceAccountName": "o@p", "timeoutSeconds": 4500, "maxRetries": 1,
        "containers": [{"image": "img:1", "env": [
            {"name": "SCHEDULE", "value": "0 9 * * 1-5"},
            {"name": "AGENT_TOKEN", "valueFrom": {"secretKeyRef": {"name": "agent-token",
                                                                   "key": "latest"}}},
        ]}]}}}}}}  # fmt: skip
    got = canonical("job", job)
    assert got == {
        "image": "img:1",
        "account": "o@p",
        "task-timeout": "4500",
        "max-retries": "1",
        "tasks": "1",
        "env.SCHEDULE": "0 9 * * 1-5",
        "secret.AGENT_TOKEN": "agent-token:latest",
    }


def test_the_roles_of_one_member_are_read_from_a_policy():
    policy = {"bindings": [{"role": "roles/a", "members": ["serviceAccount:x", "user:y"]},
                           {"role": "roles/b", "members": ["serviceAccount:z"]}]}  # fmt: skip
    r = subprocess.run(
        [sys.executable, str(REPO / "deploy/canonical.py"), "roles", "serviceAccount:x"],
        input=json.dumps(policy),
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.split() == ["roles/a"]


def test_deploy_env_and_the_jobs_settings_are_kept_out_of_git():
    ignored = subprocess.run(
        ["git", "check-ignore", "deploy.env", "job.env"], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout.split() == ["deploy.env", "job.env"]
    assert Path(REPO / "deploy.env.example").exists()


def test_docs_deploy_md_names_every_setting_of_deploy_env():
    from tests.test_docs import settings_named

    settings = (REPO / "deploy/settings.sh").read_text()
    block = re.search(r"readonly SETTINGS=\((.*?)\n\)", settings, re.S)
    assert block
    known = set(re.findall(r'"([A-Z_]+)=', block.group(1)))
    missing = known - settings_named((REPO / "docs/deploy.md").read_text())
    assert missing == set(), f"docs/deploy.md does not name {sorted(missing)}"


@pytest.mark.parametrize(
    ("said", "hint"),
    [
        (
            "ERROR: (gcloud.services.list) PERMISSION_DENIED: Permission "
            "'serviceusage.services.list' denied on resource 'projects/p-1' (or it may not exist).",
            "it needs serviceusage.services.list",
        ),
        (
            "ERROR: (gcloud.services.list) FAILED_PRECONDITION: Billing account for project "
            "'123' is not found. Billing must be enabled for activation of service(s)",
            "gcloud billing projects link p-1",
        ),
        (
            "ERROR: (gcloud.services.list) Constraint constraints/compute.vmExternalIpAccess "
            "violated for project p-1.",
            "an organisation policy (constraints/compute.vmExternalIpAccess) forbids it",
        ),
    ],
)
def test_a_refusal_names_the_resource_and_what_fixes_it(tmp_path, said, hint):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"#!/bin/sh\necho {json.dumps(said)} >&2\nexit 1\n")
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "job.env").write_text("JOB_COMMAND=true\n")
    (tmp_path / "deploy.env").write_text(REQUIRED + f"JOB_ENV_FILE={tmp_path / 'job.env'}\n")
    r = subprocess.run(
        ["bash", str(REPO / "deploy.sh"), "apply"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "DEPLOY_ENV": str(tmp_path / "deploy.env")},
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1
    assert "APIs: listing the enabled APIs failed: ERROR: (gcloud.services.list)" in r.stderr
    assert hint in r.stderr, r.stderr
    assert "run ./deploy.sh apply again once it is fixed" in r.stderr


def test_a_loopback_override_for_gcloud_run_is_refused_outside_the_private_network():
    """Outside the emulator's private network its endpoint overrides point at loopback, where
    gcloud run would look up REGION-127.0.0.1 on this machine's network."""
    for name in ("RUN", "CLOUDSCHEDULER"):
        r = subprocess.run(
            ["bash", str(REPO / "deploy.sh"), "plan"],
            env={
                "PATH": "/usr/bin:/bin",
                "DEPLOY_ENV": "/nonexistent",
                f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{name}": "http://127.0.0.1:8089/run/",
            },
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 1, r.stderr
        assert "inside the emulator's private network" in r.stderr, r.stderr


def test_the_emulators_run_refuses_gcloud_run_and_scheduler_without_its_private_network(
    capsys,
):
    from gcp_emulator.cli import main

    for argv in (["gcloud", "run", "jobs", "list"], ["gcloud", "beta", "scheduler", "jobs"]):
        with pytest.raises(SystemExit) as exc:
            main(["run", "--", *argv])
        assert exc.value.code == 2
        assert "runs only with --private-network" in capsys.readouterr().err


# -- alerts: the settings, the check's schedule, the bodies sent to Cloud Monitoring ----------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (REQUIRED.replace("ALERT_EMAIL=ops@example.com\n", ""), "set ALERT_EMAIL and/or"),
        (REQUIRED.replace("ops@example.com", "ops at example"), "is not one e-mail address"),
        (REQUIRED + "ALERT_WEBHOOK_URL=ftp://x\n", "ALERT_WEBHOOK_URL is not an http(s) URL"),
        (REQUIRED + "CHECK_MARGIN=1m\n", "CHECK_MARGIN must be a whole number"),
        (REQUIRED.replace("0 9 * * 1-5", "*/5 * * * *"), "fires 5 minutes apart"),
        (REQUIRED.replace("0 9 * * 1-5", "45 23,22 * * 1-5"), "on the next day and not others"),
    ],
)
def test_an_alert_setting_that_cannot_work_is_refused_before_any_gcloud_call(run, text, words):
    r = run(text + "JOB_ENV=\n")
    assert r.returncode == 1 and words in r.stderr, r.stderr
    assert r.calls == []


def test_a_gcloud_failure_with_nothing_on_stderr_still_says_which_resource_failed(run):
    r = run(REQUIRED + "JOB_ENV=\n")  # the fake gcloud fails without a word
    assert r.returncode == 1
    assert "APIs: listing the enabled APIs failed: gcloud said nothing" in r.stderr, r.stderr


def test_a_webhook_url_is_never_printed_even_when_refused(run):
    secret_url = "https://hooks.example.com/x?auth_token=s3cr3t-value"
    r = run(REQUIRED + f"ALERT_WEBHOOK_URL={secret_url}\nJOB_ENV=\n")
    assert "s3cr3t-value" not in r.stdout + r.stderr


def check_schedule(schedule: str, seconds: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy/check_schedule.py"), schedule, str(seconds)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("schedule", "seconds", "expected"),
    [
        ("0 9 * * 1-5", 960, "16 9 * * 1-5"),
        ("50 9 * * mon-fri", 960, "6 10 * * mon-fri"),
        ("30 23 * * 1-5", 1860, "1 0 * * 2-6"),  # past midnight: the next weekdays
        ("50 23 * * 5", 960, "6 0 * * 6"),
        ("0 */2 * * *", 420, "7 0-22/2 * * *"),
        ("*/15 * * * *", 420, "7-52/15 * * * *"),
        ("0 9,17 * * *", 61, "2 9,17 * * *"),  # 61 s: rounded up to 2 minutes
        ("30 23 * * *", 3600, "30 0 * * *"),  # every day: midnight is no matter
    ],
)
def test_the_checks_schedule_is_the_slots_moved_later(schedule, seconds, expected):
    r = check_schedule(schedule, seconds)
    assert r.returncode == 0 and r.stdout.strip() == expected, r.stderr
    fires_moved_later(schedule, expected, -(-seconds // 60))


def fires_moved_later(schedule: str, shifted: str, minutes: int) -> None:
    """Over a year, each fire time of schedule, moved `minutes` later, is one of shifted's and
    there are as many (cronsim: the cron Cloud Scheduler's syntax follows)."""
    from datetime import datetime, timedelta

    from cronsim import CronSim

    start = datetime(2026, 1, 1)
    end = datetime(2027, 1, 1)
    slots = [t + timedelta(minutes=minutes) for t in _until(CronSim(schedule, start), end)]
    checks = list(_until(CronSim(shifted, start + timedelta(minutes=minutes)), end))
    slots = [t for t in slots if t < end]
    assert slots == checks[: len(slots)] and len(checks) - len(slots) <= 1


def _until(times, end):
    for t in times:
        if t >= end:
            return
        yield t


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ("0 23 1 * *", None),  # no crossing: fine
        ("50 23 1 * *", "next day of the month"),
        ("50 23 * 6 *", "next day of the month (or the next month)"),
        ("0 9 * *", "is not five cron fields"),
        ("0 25 * * *", "out of 0-23"),
    ],
)
def test_a_schedule_that_no_cron_line_can_move_says_so(schedule, words):
    r = check_schedule(schedule, 960)
    if words is None:
        assert r.returncode == 0 and r.stdout.strip() == "16 23 1 * *"
    else:
        assert r.returncode == 2 and words in r.stderr, r.stderr


def test_the_alert_policy_watches_the_jobs_failed_executions_and_closes_without_failures():
    r = subprocess.run(
        [sys.executable, str(REPO / "deploy/alerting.py"), "policy", "vm-job-runner: a slot",
         "vm-job-runner", "asia-northeast3", "projects/p/notificationChannels/2",
         "projects/p/notificationChannels/1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    body = json.loads(r.stdout)
    threshold = body["conditions"][0]["conditionThreshold"]
    assert threshold["filter"] == (
        'metric.type="run.googleapis.com/job/completed_execution_count" AND '
        'resource.type="cloud_run_job" AND resource.labels.job_name="vm-job-runner" AND '
        'metric.labels.result="failed"'
    )
    assert threshold["comparison"] == "COMPARISON_GT" and threshold["thresholdValue"] == 0
    assert threshold["evaluationMissingData"] == "EVALUATION_MISSING_DATA_INACTIVE"
    assert body["notificationChannels"] == sorted(body["notificationChannels"])
    assert "exit codes" in body["documentation"]["content"]
    got = canonical("policy", [body], "vm-job-runner: a slot")
    assert got["channels"] == "projects/p/notificationChannels/1,projects/p/notificationChannels/2"
    assert canonical("policy", [body], "another policy") == {}


def test_a_webhook_channel_is_compared_by_its_urls_digest_and_built_from_the_environment():
    url = "https://hooks.example.com/x?auth_token=s3cr3t"
    r = subprocess.run(
        [sys.executable, str(REPO / "deploy/alerting.py"), "channel", "webhook", "j (webhook)"],
        capture_output=True, text=True, check=True, env={**os.environ, "ALERT_WEBHOOK_URL": url},
    )  # fmt: skip
    body = json.loads(r.stdout)
    assert body["type"] == "webhook_tokenauth" and body["labels"] == {"url": url}
    got = canonical("channel", [{**body, "name": "projects/p/notificationChannels/7"}],
                    "j (webhook)")  # fmt: skip
    assert "s3cr3t" not in json.dumps(got)
    assert got["name"] == "projects/p/notificationChannels/7" and len(got["url-sha256"]) == 64


def test_the_checks_scheduler_job_is_read_with_its_body():
    job = {
        "schedule": "16 9 * * 1-5",
        "timeZone": "Asia/Seoul",
        "httpTarget": {
            "uri": "https://r/run",
            "httpMethod": "POST",
            "headers": {"Content-Type": "application/json", "User-Agent": "Google-Cloud-Scheduler"},
            "body": "eyJvdmVycmlkZXMiOnt9fQ==",
        },
    }
    got = canonical("scheduler", job)
    assert got["body"] == '{"overrides":{}}' and got["content-type"] == "application/json"

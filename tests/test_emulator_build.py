"""The emulator's Cloud Build, Cloud Storage and Artifact Registry as `gcloud builds submit --tag`
and `gcloud artifacts` use them (in the private network: gcloud follows a build's log at Cloud
Storage's fixed address), and its Cloud Monitoring's notification channels and alert policies
(stored and listed), all with the real gcloud."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.harness import EmulatorProcess, needs_gcloud, needs_private_network

pytestmark = [pytest.mark.e2e, needs_gcloud]

REGION = "us-central1"
REPOSITORY = f"{REGION}-docker.pkg.dev/demo-project/jobs"


@pytest.fixture
def private(tmp_path):
    emu = EmulatorProcess(None, tmp_path / "emulator", private=True)
    yield emu
    emu.stop()


@pytest.fixture
def plain(tmp_path):
    emu = EmulatorProcess(None, tmp_path / "emulator")
    yield emu
    emu.stop()


def ok(emu: EmulatorProcess, *args: str) -> str:
    r = emu.gcloud(*args, timeout=300)
    assert r.returncode == 0, f"gcloud {' '.join(args)}: {r.stderr}"
    return r.stdout


def submit(emu: EmulatorProcess, source, tag: str):
    return emu.run(
        ["bash", "-c", f'cd "{source}" && gcloud builds submit --tag "{tag}" .'], timeout=300
    )


def context(tmp_path, dockerfile: str, **files: str):
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    (source / "Dockerfile").write_text(textwrap.dedent(dockerfile))
    for name, text in files.items():
        (source / name).write_text(text)
    return source


@needs_private_network
def test_builds_submit_uploads_the_source_builds_its_dockerfile_and_pushes_the_tag(
    private, tmp_path
):
    ok(private, "artifacts", "repositories", "create", "jobs", "--repository-format=docker",
       f"--location={REGION}")  # fmt: skip
    source = context(
        tmp_path,
        """\
        FROM debian:12-slim
        COPY hello.sh /app/hello.sh
        RUN test -x /app/hello.sh && echo "checked in the build"
        ENTRYPOINT ["/app/hello.sh"]
        """,
        **{"hello.sh": "#!/bin/sh\necho hello\n"},
    )
    (source / "hello.sh").chmod(0o755)
    r = submit(private, source, f"{REPOSITORY}/hello:v1")
    assert r.returncode == 0, r.stderr
    assert "REMOTE BUILD OUTPUT" in r.stdout and "checked in the build" in r.stdout, r.stdout
    assert "SUCCESS" in r.stdout.splitlines()[-1], r.stdout
    assert "Uploading tarball of [.] to [gs://demo-project_cloudbuild/source/" in r.stderr
    images = ok(private, "artifacts", "docker", "images", "list", REPOSITORY, "--include-tags",
                "--format=json")  # fmt: skip
    [image] = json.loads(images)
    assert image["package"] == f"{REPOSITORY}/hello" and image["tags"] == ["v1"], image
    builds = ok(private, "builds", "list", "--format=value(status)")
    assert builds.split() == ["SUCCESS"]


@needs_private_network
def test_a_build_pushed_to_a_repository_that_does_not_exist_fails_naming_it(private, tmp_path):
    source = context(tmp_path, 'FROM debian:12-slim\nCMD ["true"]\n')
    r = submit(private, source, f"{REGION}-docker.pkg.dev/demo-project/missing/app:v1")
    assert r.returncode != 0
    assert 'BUILD FAILURE: name unknown: Repository "missing" not found' in r.stderr, r.stderr
    assert 'completed with status "FAILURE"' in r.stderr


@needs_private_network
def test_a_failing_step_fails_the_build_with_its_output(private, tmp_path):
    ok(private, "artifacts", "repositories", "create", "jobs", "--repository-format=docker",
       f"--location={REGION}")  # fmt: skip
    source = context(tmp_path, "FROM debian:12-slim\nRUN echo about to fail && false\n")
    r = submit(private, source, f"{REPOSITORY}/broken:v1")
    assert r.returncode != 0
    assert "about to fail" in r.stdout, r.stdout
    assert 'completed with status "FAILURE"' in r.stderr, r.stderr
    assert (
        private.state()["artifactregistry"][
            "projects/demo-project/locations/us-central1/repositories/jobs"
        ]
        == {}
    ), "a failed build pushes nothing"


@needs_private_network
def test_a_source_over_5_mib_goes_up_in_a_resumable_upload(private, tmp_path):
    ok(private, "artifacts", "repositories", "create", "jobs", "--repository-format=docker",
       f"--location={REGION}")  # fmt: skip
    source = context(tmp_path, "FROM debian:12-slim\nCOPY blob.bin /blob.bin\n")
    (source / "blob.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    r = submit(private, source, f"{REPOSITORY}/big:v1")
    assert r.returncode == 0, r.stderr
    paths = [c["path"] for c in private.calls() if c["api"] == "storage.objects.insert"]
    assert any(p.startswith("/resumable/upload/") for p in paths), paths


def test_a_repository_is_created_described_listed_and_deleted(plain):
    ok(plain, "artifacts", "repositories", "create", "jobs", "--repository-format=docker",
       f"--location={REGION}", "--description=the job's images")  # fmt: skip
    described = json.loads(ok(plain, "artifacts", "repositories", "describe", "jobs",
                              f"--location={REGION}", "--format=json"))  # fmt: skip
    assert described["format"] == "DOCKER" and described["description"] == "the job's images"
    assert described["registryUri"] == REPOSITORY
    again = plain.gcloud("artifacts", "repositories", "create", "jobs",
                         "--repository-format=docker", f"--location={REGION}")  # fmt: skip
    assert again.returncode != 0 and "ALREADY_EXISTS" in again.stderr, again.stderr
    listed = ok(plain, "artifacts", "repositories", "list", f"--location={REGION}",
                "--format=value(name)")  # fmt: skip
    assert listed.split() == ["jobs"]
    ok(plain, "artifacts", "repositories", "delete", "jobs", f"--location={REGION}", "--quiet")
    gone = plain.gcloud("artifacts", "repositories", "describe", "jobs", f"--location={REGION}")
    assert gone.returncode != 0 and "NOT_FOUND" in gone.stderr, gone.stderr


def test_notification_channels_and_alert_policies_are_stored_and_listed(plain, tmp_path):
    r = plain.gcloud(
        "beta", "monitoring", "channels", "create", "--display-name=on call",
        "--type=webhook_tokenauth", "--channel-labels=url=https://hooks.example.test/alert",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    channel = r.stderr.split("[", 1)[1].split("]", 1)[0]
    assert channel.startswith("projects/demo-project/notificationChannels/"), r.stderr
    ok(plain, "beta", "monitoring", "channels", "create", "--display-name=mail", "--type=email",
       "--channel-labels=email_address=ops@example.test")  # fmt: skip
    hooks = ok(plain, "beta", "monitoring", "channels", "list", "--type=webhook_tokenauth",
               "--format=value(displayName)")  # fmt: skip
    assert hooks.splitlines() == ["on call"], "the type filter is the server's"
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "displayName": "vm-job failed executions",
        "combiner": "OR",
        "conditions": [{
            "displayName": "an execution failed",
            "conditionThreshold": {
                "filter": 'metric.type="run.googleapis.com/job/completed_execution_count" '
                          'AND metric.labels.result="failed"',
                "comparison": "COMPARISON_GT", "thresholdValue": 0, "duration": "0s",
                "aggregations": [{"alignmentPeriod": "300s", "perSeriesAligner": "ALIGN_SUM"}],
            },
        }],
    }))  # fmt: skip
    r = plain.gcloud(
        "alpha", "monitoring", "policies", "create", f"--policy-from-file={policy}",
        f"--notification-channels={channel}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    [listed] = json.loads(ok(plain, "alpha", "monitoring", "policies", "list", "--format=json"))
    assert listed["displayName"] == "vm-job failed executions"
    assert listed["notificationChannels"] == [channel]
    assert listed["conditions"][0]["name"].startswith(listed["name"] + "/conditions/")
    ok(plain, "alpha", "monitoring", "policies", "delete", listed["name"], "--quiet")
    assert json.loads(ok(plain, "alpha", "monitoring", "policies", "list", "--format=json")) == []
    ok(plain, "beta", "monitoring", "channels", "delete", channel, "--quiet")
    left = ok(plain, "beta", "monitoring", "channels", "list", "--format=value(displayName)")
    assert left.splitlines() == ["mail"]


@needs_private_network
def test_a_build_step_writes_its_image_and_cannot_change_this_machine(private, tmp_path):
    probe = Path("/etc") / f"emulator-probe-{tmp_path.name}"
    source = context(tmp_path, f"FROM debian:12-slim\nRUN touch {probe}\n")
    r = private.http.post(
        "/_emulator/images",
        json={"name": f"{REPOSITORY}/probe:v1", "context": str(source)},
        timeout=120,
    )
    assert r.status_code == 400 and "returned a non-zero code" in r.text, r.text
    assert not probe.exists(), "a build step changed this machine's /etc"
    (source / "Dockerfile").write_text("FROM debian:12-slim\nRUN mkdir /app && echo ok > /app/x\n")
    r = private.http.post(
        "/_emulator/images",
        json={"name": f"{REPOSITORY}/probe:v2", "context": str(source)},
        timeout=120,
    )
    assert r.status_code == 200, r.text


@needs_private_network
def test_a_build_past_its_timeout_ends_timeout_and_its_step_is_killed(private, tmp_path):
    ok(private, "artifacts", "repositories", "create", "jobs", "--repository-format=docker",
       f"--location={REGION}")  # fmt: skip
    marker = f"sleep 97.{os.getpid()}"
    source = context(tmp_path, f"FROM debian:12-slim\nRUN echo sleeping && {marker}\n")
    r = private.run(
        ["bash", "-c", f'cd "{source}" && gcloud builds submit --timeout=8s --tag '
         f'"{REPOSITORY}/slow:v1" .'],
        timeout=120,
    )  # fmt: skip
    assert r.returncode != 0
    assert 'completed with status "TIMEOUT"' in r.stderr, r.stderr
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.stdout == "", f"the step outlived its build: {left.stdout}"

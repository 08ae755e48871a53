"""The emulator's Cloud Monitoring alerting (gcp_emulator/monitoring/alerting.py), no server and
no gcloud: a policy on failed Cloud Run executions opens one incident per failure window, tells
a webhook on loopback in Google's payload shape (schema 1.2) and records an e-mail, closes when
the failures stop (with EVALUATION_MISSING_DATA_INACTIVE), and never sends anything off the
machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gcp_emulator.config import default_config
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.state import Cloud
from tests.harness import WebhookReceiver

METRIC = "run.googleapis.com/job/completed_execution_count"


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def policy_body(channels: list[str], **threshold: Any) -> dict[str, Any]:
    return {
        "displayName": "vm-job-runner: failed executions",
        "combiner": "OR",
        "documentation": {"content": "Read the execution's log.", "mimeType": "text/markdown"},
        "notificationChannels": channels,
        "conditions": [
            {
                "displayName": "a failed execution of vm-job-runner",
                "conditionThreshold": {
                    "filter": f'metric.type="{METRIC}" AND resource.type="cloud_run_job" AND '
                    'resource.labels.job_name="vm-job-runner" AND metric.labels.result="failed"',
                    "aggregations": [{"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_DELTA",
                                      "crossSeriesReducer": "REDUCE_SUM",
                                      "groupByFields": ["resource.label.job_name"]}],
                    "comparison": "COMPARISON_GT",
                    "thresholdValue": 0,
                    "duration": "0s",
                    "evaluationMissingData": "EVALUATION_MISSING_DATA_INACTIVE",
                    **threshold,
                },
            }
        ],
    }  # fmt: skip


def execution_ends(cloud: Cloud, result: str, job: str = "vm-job-runner") -> None:
    cloud.monitoring.add_point(
        METRIC,
        {"result": result},
        {"job_name": job, "location": "us-east4", "project_id": cloud.project},
        resource_type="cloud_run_job",
    )


def scenario(tmp_path: Path, body: Any) -> Any:
    """body(cloud, webhook channel name, email channel name) run in an event loop, then the
    posts it made are awaited."""

    async def main() -> Any:
        cloud = Cloud(default_config(), tmp_path, "http://127.0.0.1:9", tmp_path)
        m = cloud.monitoring
        try:
            return await body(cloud, m)
        finally:
            await m.close()

    return asyncio.run(main())


def channels(m: Any, url: str) -> list[str]:
    hook = m.create_channel({"type": "webhook_tokenauth", "labels": {"url": url}})
    mail = m.create_channel({"type": "email", "labels": {"email_address": "ops@example.com"}})
    return [hook["name"], mail["name"]]


def test_a_failed_execution_opens_an_incident_and_tells_the_webhook_in_googles_shape(
    tmp_path, receiver
):
    async def body(cloud: Cloud, m: Any) -> Any:
        names = channels(m, receiver.url)
        policy = m.create_policy(policy_body(names))
        execution_ends(cloud, "succeeded")
        assert not m.alerting.notifications, "a success alerts nobody"
        execution_ends(cloud, "failed")
        await asyncio.sleep(0.5)
        return policy

    policy = scenario(tmp_path, body)
    assert len(receiver.bodies) == 1
    sent = receiver.bodies[0]
    assert sent["version"] == "1.2"
    incident = sent["incident"]
    assert incident["state"] == "open" and incident["ended_at"] is None
    assert incident["policy_name"] == "vm-job-runner: failed executions"
    assert incident["documentation"]["content"] == "Read the execution's log."
    assert incident["resource"]["type"] == "cloud_run_job"
    assert incident["resource"]["labels"]["job_name"] == "vm-job-runner"
    assert incident["resource"]["labels"]["location"] == "us-east4"
    assert incident["metric"]["type"] == METRIC
    assert incident["metric"]["labels"] == {"result": "failed"}
    assert incident["observed_value"] == "1"
    assert incident["condition"]["name"].startswith(policy["name"] + "/conditions/")
    assert {"incident_id", "started_at", "summary", "url", "scoping_project_id"} <= set(incident)


def test_an_email_channel_is_recorded_with_its_address_and_subject(tmp_path, receiver):
    async def body(cloud: Cloud, m: Any) -> Any:
        m.create_policy(policy_body(channels(m, receiver.url)))
        execution_ends(cloud, "failed")
        await asyncio.sleep(0.3)
        return [n for n in m.alerting.notifications if n["type"] == "email"]

    (mail,) = scenario(tmp_path, body)
    assert mail["to"] == "ops@example.com" and mail["state"] == "open"
    assert mail["subject"] == "[ALERT - Open] vm-job-runner: failed executions"


def test_a_second_failure_in_the_window_is_the_same_incident_and_a_later_one_a_new_one(
    tmp_path, receiver
):
    async def body(cloud: Cloud, m: Any) -> Any:
        m.create_policy(policy_body(channels(m, receiver.url)))
        execution_ends(cloud, "failed")
        execution_ends(cloud, "failed")
        assert len(m.alerting.incidents) == 1, "one incident while the window holds failures"
        for p in m.points:  # the failures are 2 minutes old: the window has none
            p.time -= 120
        m.alerting.evaluate()
        assert [i.ended is not None for i in m.alerting.incidents] == [True]
        execution_ends(cloud, "failed")
        await asyncio.sleep(0.5)
        return m.alerting.incidents

    first, second = scenario(tmp_path, body)
    by_incident: dict[str, list[str]] = {}
    for b in receiver.bodies:  # the posts are concurrent: their order is not the incidents'
        by_incident.setdefault(b["incident"]["incident_id"], []).append(b["incident"]["state"])
    assert sorted(by_incident[first.id]) == ["closed", "open"]
    assert by_incident[second.id] == ["open"]


def test_without_missing_data_inactive_an_incident_stays_open_until_auto_close(tmp_path, receiver):
    async def body(cloud: Cloud, m: Any) -> Any:
        policy = policy_body(channels(m, receiver.url), evaluationMissingData="")
        policy["alertStrategy"] = {"autoClose": "1800s"}
        m.create_policy(policy)
        execution_ends(cloud, "failed")
        start = m.points[-1].time
        m.alerting.evaluate(start + 600)
        open_after_10_min = m.alerting.incidents[0].ended is None
        m.alerting.evaluate(start + 1900)
        return open_after_10_min, m.alerting.incidents[0].ended is not None

    assert scenario(tmp_path, body) == (True, True)


def test_another_jobs_failure_or_a_disabled_policy_alerts_nobody(tmp_path, receiver):
    async def body(cloud: Cloud, m: Any) -> Any:
        policy = m.create_policy(policy_body(channels(m, receiver.url)))
        execution_ends(cloud, "failed", job="someone-elses-job")
        policy["enabled"] = False
        execution_ends(cloud, "failed")
        await asyncio.sleep(0.3)
        return m.alerting.notifications

    assert scenario(tmp_path, body) == []
    assert receiver.bodies == []


def test_a_webhook_off_this_machine_is_recorded_and_never_sent(tmp_path):
    async def body(cloud: Cloud, m: Any) -> Any:
        m.create_policy(policy_body(channels(m, "https://hooks.example.com/alert")))
        execution_ends(cloud, "failed")
        return m.alerting.notifications

    hook = next(n for n in scenario(tmp_path, body) if n["type"] == "webhook_tokenauth")
    assert hook["sent"] is False and "only to a loopback address" in hook["error"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"filter": 'metric.type = starts_with("run.")'}, 'KEY = "VALUE" terms'),
        ({"filter": 'resource.labels.job_name="x"'}, "must name a metric.type"),
        ({"comparison": "COMPARISON_SOMETIMES"}, "Unknown comparison"),
        ({"aggregations": [{"perSeriesAligner": "ALIGN_PERCENTILE_99"}]}, "count aligners only"),
    ],
)
def test_a_condition_the_emulator_cannot_evaluate_is_refused_at_create(tmp_path, change, message):
    cloud = Cloud(default_config(), tmp_path, "http://127.0.0.1:9", tmp_path)
    with pytest.raises(ApiError, match=message.replace("(", r"\(")):
        cloud.monitoring.create_policy(policy_body([], **change))


def test_a_patch_mask_in_protobufs_spelling_replaces_the_field_it_names():
    from gcp_emulator.monitoring.responses import patched

    current = {"name": "p/1", "displayName": "a", "notificationChannels": ["c/1"]}
    got = patched(current, {"notificationChannels": ["c/1", "c/2"]}, "notification_channels")
    assert got == {"name": "p/1", "displayName": "a", "notificationChannels": ["c/1", "c/2"]}
    assert patched(current, {}, "display_name") == {"name": "p/1", "notificationChannels": ["c/1"]}

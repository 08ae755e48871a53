"""deploy/alerting.py: the bodies deploy.sh sends to Cloud Monitoring for its alerts, as JSON on
stdout (gcloud's --channel-content-from-file and --policy-from-file take them):

  alerting.py channel email DISPLAY_NAME ADDRESS   an e-mail notification channel
  alerting.py channel webhook DISPLAY_NAME         a webhook channel (webhook_tokenauth) to the
                                                   URL in $ALERT_WEBHOOK_URL: read from the
                                                   environment, never an argument (it may carry
                                                   a token)
  alerting.py policy DISPLAY_NAME JOB REGION [CHANNEL...]
                                                   the alert policy: a failed execution of the
                                                   Cloud Run job JOB (a slot that failed, or the
                                                   check's exit 12 for a missed one) opens an
                                                   incident and tells the CHANNELs

The condition: `run.googleapis.com/job/completed_execution_count` with `result = "failed"` for
the job, summed over 5 minutes, above 0, at once (duration 0 s); with no failure in the window the
incident closes (EVALUATION_MISSING_DATA_INACTIVE: a count with no failures has no data, and
without this the incident would stay open, and the next failure tell nobody, until autoClose),
and autoClose after 30 minutes whatever happens. docs/alerts.md says why each.

Python's standard library only: deploy.sh runs where gcloud does, and gcloud needs Python."""

from __future__ import annotations

import json
import os
import sys

METRIC = "run.googleapis.com/job/completed_execution_count"

DOCUMENTATION = """\
**A slot of the Cloud Run job `{job}` failed or was missed** (region {region}).

Every scheduled slot is either run by the job (an execution that fails alerts here) or judged by \
`entrypoint.sh check` once its START_DEADLINE has passed (exit 12, "slot missed", alerts here).

What to do:
1. Find the failed execution: `gcloud run jobs executions list --job={job} --region={region} \
--limit=5`.
2. Read its summary line (its outcome, exit code, slot and steps): `gcloud logging read \
'resource.type="cloud_run_job" AND resource.labels.job_name="{job}" AND \
jsonPayload.summary.outcome:*' --limit=5 --format='value(jsonPayload.message)'`.
3. Look its exit code up in README.md's table of exit codes: 12 names the slot and what the VM's \
record says (failed, cut off, never started: a paused scheduler job, a busy VM, an image that \
cannot start); 1 is the job's own failure (its log is printed), 4 a boot or run timeout, 9 no \
capacity in the zone, 10 a slot started too late.
4. `./deploy.sh status` shows the VM, the schedules and the last executions. Before running a \
missed slot by hand, check with your broker or exchange what the job did (a job cut off half-way \
may have placed orders).

Each slot runs once: a slot that failed does not run again by itself (docs/alerts.md).\
"""


def channel(kind: str, display: str, address: str = "") -> dict[str, object]:
    if kind == "email":
        return {"type": "email", "displayName": display, "labels": {"email_address": address}}
    url = os.environ.get("ALERT_WEBHOOK_URL", "")
    if not url:
        raise SystemExit("alerting.py: ALERT_WEBHOOK_URL is not set")
    return {"type": "webhook_tokenauth", "displayName": display, "labels": {"url": url}}


def policy(display: str, job: str, region: str, channels: list[str]) -> dict[str, object]:
    return {
        "displayName": display,
        "combiner": "OR",
        "enabled": True,
        "documentation": {
            "content": DOCUMENTATION.format(job=job, region=region),
            "mimeType": "text/markdown",
            "subject": f"vm-job-runner: a slot of {job} failed or was missed",
        },
        "conditions": [
            {
                "displayName": f"a failed execution of {job}",
                "conditionThreshold": {
                    "filter": f'metric.type="{METRIC}" AND resource.type="cloud_run_job" AND '
                    f'resource.labels.job_name="{job}" AND metric.labels.result="failed"',
                    "aggregations": [
                        {
                            "alignmentPeriod": "300s",
                            "perSeriesAligner": "ALIGN_DELTA",
                            "crossSeriesReducer": "REDUCE_SUM",
                            "groupByFields": ["resource.label.job_name"],
                        }
                    ],
                    "comparison": "COMPARISON_GT",
                    "thresholdValue": 0,
                    "duration": "0s",
                    "trigger": {"count": 1},
                    "evaluationMissingData": "EVALUATION_MISSING_DATA_INACTIVE",
                },
            }
        ],
        "alertStrategy": {"autoClose": "1800s"},
        "notificationChannels": sorted(channels),
    }


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "channel" and argv[1] in ("email", "webhook"):
        body = channel(argv[1], argv[2], *argv[3:4])
    elif len(argv) >= 4 and argv[0] == "policy":
        body = policy(argv[1], argv[2], argv[3], argv[4:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(body, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

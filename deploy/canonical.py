"""deploy/canonical.py KIND [ARG]: a resource as gcloud describes it (JSON on stdin), reduced to
the `key=value` lines deploy.sh compares with what deploy.env wants, one per line, sorted.

Python's standard library only: deploy.sh runs where gcloud does, and gcloud needs Python.

KIND is one of:
  vm          an instance (`gcloud compute instances describe --format=json`)
  job         a Cloud Run job (`gcloud run jobs describe --format=json`, the v1 Job)
  scheduler   a Cloud Scheduler job (`gcloud scheduler jobs describe --format=json`)
  firewall    a firewall rule (`gcloud compute firewall-rules describe --format=json`)
  role        a custom role (`gcloud iam roles describe --format=json`)
  roles MEMBER  the roles an IAM policy (`… get-iam-policy --format=json`) grants MEMBER
  versions    a secret's versions (`gcloud secrets versions list --format=json`): name=state
  channel DISPLAY  the notification channel named DISPLAY in a list (`gcloud beta monitoring
              channels list --format=json`), or one channel's body (deploy/alerting.py's); a
              webhook's URL as its SHA-256 only (it may carry a token)
  policy DISPLAY   the alert policy named DISPLAY in a list (`gcloud alpha monitoring policies
              list --format=json`), or one policy's body (deploy/alerting.py's)
A resource missing from a list prints nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from typing import Any


def _base(url: str) -> str:
    return url.rsplit("/", 1)[-1] if url else ""


def vm(d: dict[str, Any]) -> dict[str, str]:
    out = {
        "status": d.get("status", ""),
        "machine-type": _base(d.get("machineType", "")),
        "owner": (d.get("labels") or {}).get("vm-job-owner", ""),
    }
    for tag in (d.get("tags") or {}).get("items") or []:
        out[f"tag.{tag}"] = "yes"
    accounts = d.get("serviceAccounts") or [{}]
    out["account"] = accounts[0].get("email", "")
    out["scopes"] = ",".join(sorted(accounts[0].get("scopes") or []))
    scheduling = d.get("scheduling") or {}
    out["max-run-duration"] = str((scheduling.get("maxRunDuration") or {}).get("seconds", ""))
    out["termination-action"] = scheduling.get("instanceTerminationAction", "")
    nics = d.get("networkInterfaces") or [{}]
    out["network"] = _base(nics[0].get("network", ""))
    out["access-configs"] = str(len(nics[0].get("accessConfigs") or []))
    for item in (d.get("metadata") or {}).get("items") or []:
        key, value = item.get("key", ""), item.get("value", "")
        if key == "startup-script":
            out["metadata.startup-script"] = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        else:
            out[f"metadata.{key}"] = value
    return out


def job(d: dict[str, Any]) -> dict[str, str]:
    execution = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
    task = (execution.get("template") or {}).get("spec") or {}
    containers = task.get("containers") or [{}]
    out = {
        "image": containers[0].get("image", ""),
        "account": task.get("serviceAccountName", ""),
        "task-timeout": str(task.get("timeoutSeconds", "")),
        "max-retries": str(task.get("maxRetries", "")),
        "tasks": str(execution.get("taskCount", "")),
    }
    for env in containers[0].get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            out[f"secret.{env['name']}"] = f"{ref.get('name', '')}:{ref.get('key', '')}"
        else:
            out[f"env.{env['name']}"] = env.get("value", "")
    return out


def scheduler(d: dict[str, Any]) -> dict[str, str]:
    target = d.get("httpTarget") or {}
    body = base64.b64decode(target.get("body") or "").decode(errors="replace")
    headers = {k.lower(): v for k, v in (target.get("headers") or {}).items()}
    return {
        "schedule": d.get("schedule", ""),
        "time-zone": d.get("timeZone", "Etc/UTC"),
        "uri": target.get("uri", ""),
        "http-method": target.get("httpMethod", ""),
        "account": (target.get("oauthToken") or {}).get("serviceAccountEmail", ""),
        "state": d.get("state", ""),
        "body": body,
        "content-type": headers.get("content-type", "") if body else "",
    }


def _named(data: Any, display: str) -> dict[str, Any] | None:
    """The resource whose displayName is display, in a list (or the one resource given)."""
    if isinstance(data, dict):
        return data
    hits = [d for d in data or [] if d.get("displayName") == display]
    return hits[0] if hits else None


def channel(d: dict[str, Any]) -> dict[str, str]:
    labels = d.get("labels") or {}
    out = {"type": d.get("type", ""), "enabled": str(d.get("enabled", True)).lower()}
    if "name" in d:
        out["name"] = d["name"]
    if "url" in labels:
        out["url-sha256"] = hashlib.sha256(labels["url"].encode()).hexdigest()
    if "email_address" in labels:
        out["address"] = labels["email_address"]
    return out


def policy(d: dict[str, Any]) -> dict[str, str]:
    conditions = d.get("conditions") or [{}]
    threshold = conditions[0].get("conditionThreshold") or {}
    agg = (threshold.get("aggregations") or [{}])[0]
    doc = (d.get("documentation") or {}).get("content", "")
    out = {
        "enabled": str(d.get("enabled", True)).lower(),
        "channels": ",".join(sorted(d.get("notificationChannels") or [])),
        "conditions": str(len(d.get("conditions") or [])),
        "filter": threshold.get("filter", ""),
        "comparison": threshold.get("comparison", ""),
        "threshold": str(float(threshold.get("thresholdValue", 0))),
        "duration": threshold.get("duration", ""),
        "alignment": agg.get("alignmentPeriod", ""),
        "aligner": agg.get("perSeriesAligner", ""),
        "reducer": agg.get("crossSeriesReducer", ""),
        "missing-data": threshold.get("evaluationMissingData", ""),
        "auto-close": (d.get("alertStrategy") or {}).get("autoClose", ""),
        "documentation": "sha256:" + hashlib.sha256(doc.encode()).hexdigest(),
    }
    if "name" in d:
        out["name"] = d["name"]
    return out


def firewall(d: dict[str, Any]) -> dict[str, str]:
    rules = d.get("allowed") or []
    allowed = [f"{a.get('IPProtocol', '')}:{','.join(a.get('ports') or [])}" for a in rules]
    return {
        "network": _base(d.get("network", "")),
        "direction": d.get("direction", ""),
        "allow": ";".join(sorted(allowed)),
        "target-tags": ",".join(sorted(d.get("targetTags") or [])),
        "source-ranges": ",".join(sorted(d.get("sourceRanges") or [])),
    }


def role(d: dict[str, Any]) -> dict[str, str]:
    return {
        "permissions": ",".join(sorted(d.get("includedPermissions") or [])),
        "deleted": "true" if d.get("deleted") else "false",
    }


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"vm", "job", "scheduler", "firewall", "role", "roles",
                                   "versions", "channel", "policy"}:  # fmt: skip
        print(__doc__, file=sys.stderr)
        return 2
    data = json.load(sys.stdin)
    kind = argv[0]
    if kind == "roles":
        member = argv[1]
        roles = sorted(
            b.get("role", "") for b in data.get("bindings") or [] if member in b.get("members", [])
        )
        print("\n".join(roles))
        return 0
    if kind == "versions":
        pairs = {_base(v.get("name", "")): v.get("state", "") for v in data}
        lines = [f"{k}={v}" for k, v in sorted(pairs.items(), key=lambda kv: int(kv[0] or 0))]
        print("\n".join(lines))
        return 0
    if kind in ("channel", "policy"):
        found = _named(data, argv[1] if len(argv) > 1 else "")
        if found is None:
            return 0
        data = found
    fields = {"vm": vm, "job": job, "scheduler": scheduler, "firewall": firewall, "role": role,
              "channel": channel, "policy": policy}  # fmt: skip
    out = fields[kind](data)
    print("\n".join(f"{k}={v}" for k, v in sorted(out.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

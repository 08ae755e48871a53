"""Cloud Logging's state: the log entries the emulated services write (a Cloud Run task's
lines, so far), and `entries.list` over them with the filters gcloud sends.

A task's line becomes a LogEntry as Cloud Run's logging agent makes it (docs/google-cloud.md,
"Cloud Run jobs and Cloud Scheduler"): logName `projects/P/logs/run.googleapis.com%2Fstdout` (or
stderr), resource `cloud_run_job` with labels job_name, location and project_id, entry labels
`run.googleapis.com/execution_name`, `task_index`, `task_attempt`; a plain line is `textPayload`,
a one-line JSON object is `jsonPayload` with `severity`, `message`'s text and
`logging.googleapis.com/labels` lifted out (the other special fields stay in the payload).

Filters: a conjunction (AND, or a line break) of comparisons `FIELD OP VALUE` (`=`, `!=`, `>=`,
`<=`, `>`, `<`, `:`), FIELD a dotted path whose segments may be quoted (`labels."run.googleapis
.com/execution_name"`), VALUE quoted or bare; `severity` compares by level. OR, NOT and
parentheses are not understood: a 400 says so."""

from __future__ import annotations

import itertools
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud
    from gcp_emulator.run.models import Attempt, Execution

SEVERITIES = (
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
)
LIFTED = ("severity", "message", "logging.googleapis.com/labels")
COMPARISON = re.compile(
    r'\s*(?P<field>(?:"[^"]*"|[A-Za-z0-9_@/-]+)(?:\.(?:"[^"]*"|[A-Za-z0-9_@/-]+))*)\s*'
    r"(?P<op>>=|<=|!=|=|>|<|:)\s*"
    r'(?P<value>"(?:[^"\\]|\\.)*"|\S+)\s*$'
)
_seq = itertools.count(1)


def stamp(when: datetime | None = None) -> str:
    """RFC 3339 in UTC with nanoseconds, as Cloud Logging writes timestamps."""
    when = when or clock.utcnow()
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


@dataclass
class Entry:
    body: dict[str, Any]
    seq: int = field(default_factory=lambda: next(_seq))


class Logging:
    """Cloud Logging's backend: the entries, newest last."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.entries: list[Entry] = []

    def write(self, body: dict[str, Any]) -> dict[str, Any]:
        now = stamp()
        body.setdefault("timestamp", now)
        body.setdefault("receiveTimestamp", now)
        body.setdefault("insertId", secrets.token_hex(8))
        body.setdefault("severity", "DEFAULT")
        self.entries.append(Entry(body))
        return body

    def task_line(self, execution: Execution, attempt: Attempt, stream: str, line: str) -> None:
        """One line a Cloud Run task printed, as the entry Cloud Logging keeps of it."""
        text = line.rstrip("\n")
        body: dict[str, Any] = {
            "logName": f"projects/{self.cloud.project}/logs/run.googleapis.com%2F{stream}",
            "resource": {
                "type": "cloud_run_job",
                "labels": {
                    "job_name": execution.job,
                    "location": execution.region,
                    "project_id": self.cloud.project,
                },
            },
            "labels": {
                "run.googleapis.com/execution_name": execution.name,
                "run.googleapis.com/task_index": str(attempt.index),
                "run.googleapis.com/task_attempt": str(attempt.attempt),
                "instanceId": attempt.marker,
            },
        }
        structured = None
        if text.startswith("{") and text.endswith("}"):
            try:
                structured = json.loads(text)
            except json.JSONDecodeError:
                structured = None
        if isinstance(structured, dict):
            severity = str(structured.get("severity", "DEFAULT")).upper()
            body["severity"] = severity if severity in SEVERITIES else "DEFAULT"
            labels = structured.get("logging.googleapis.com/labels")
            if isinstance(labels, dict):
                body["labels"].update({str(k): str(v) for k, v in labels.items()})
            body["jsonPayload"] = {
                k: v for k, v in structured.items() if k not in LIFTED[:1] and k != LIFTED[2]
            }
        else:
            body["textPayload"] = text
        self.write(body)

    def list(
        self,
        resource_names: list[str],
        filter_text: str,
        order_by: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[dict[str, Any]], str]:
        """entries.list: the entries of these projects that match, in order, a page of them."""
        projects = {
            r.removeprefix("projects/") for r in resource_names if r.startswith("projects/")
        }
        if projects and self.cloud.project not in projects:
            return [], ""
        terms = parse_filter(filter_text)
        matched = [e for e in self.entries if all(term(e.body) for term in terms)]
        descending = order_by.replace(" ", "").lower() == "timestampdesc"
        matched.sort(key=lambda e: (e.body.get("timestamp", ""), e.seq), reverse=descending)
        start = int(page_token) if page_token.isdigit() else 0
        size = page_size if page_size > 0 else 50
        page = matched[start : start + size]
        nxt = str(start + size) if start + size < len(matched) else ""
        return [e.body for e in page], nxt

    def state_json(self) -> dict[str, Any]:
        return {"log_entries": len(self.entries)}


def parse_filter(text: str) -> list[Any]:
    """The filter as a list of predicates on an entry (all must hold)."""
    terms = []
    for part in re.split(r"\s+AND\s+|\n", text or ""):
        part = part.strip()
        if not part:
            continue
        if re.search(r"\bOR\b|\bNOT\b|^-|[()]", part):
            raise ApiError(
                400,
                "invalid",
                f"the emulator's Logging understands conjunctions of comparisons only, not: {part}",
            )
        hit = COMPARISON.match(part)
        if hit is None:
            raise ApiError(400, "invalid", f"Unparseable filter: {part}")
        terms.append(predicate(hit["field"], hit["op"], unquote(hit["value"])))
    return terms


def unquote(value: str) -> str:
    if value.startswith('"') and value.endswith('"'):
        return json.loads(value)
    return value


def field_path(path: str) -> list[str]:
    return [unquote(p) for p in re.findall(r'"[^"]*"|[^.]+', path)]


def lookup(body: dict[str, Any], parts: list[str]) -> Any:
    value: Any = body
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def predicate(path: str, op: str, value: str) -> Any:
    parts = field_path(path)

    def holds(body: dict[str, Any]) -> bool:
        found = lookup(body, parts)
        if found is None:
            return op == "!="
        if parts == ["severity"]:
            have = SEVERITIES.index(str(found)) if found in SEVERITIES else 0
            want = SEVERITIES.index(value.upper()) if value.upper() in SEVERITIES else 0
            return compare(have, op, want)
        if op == ":":
            return value in json.dumps(found) if not isinstance(found, str) else value in found
        return compare(str(found), op, value)

    return holds


def compare(have: Any, op: str, want: Any) -> bool:
    return {
        "=": have == want,
        ":": have == want,
        "!=": have != want,
        ">=": have >= want,
        "<=": have <= want,
        ">": have > want,
        "<": have < want,
    }[op]

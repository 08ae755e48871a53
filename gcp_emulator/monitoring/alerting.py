"""Cloud Monitoring's alerting, as far as this flow uses it: a policy's threshold conditions
evaluated on the points the emulated services write, an incident opened per time series that
crosses the threshold, and the policy's notification channels told, when it opens and when it
closes.

What is evaluated (the rest of a policy is kept, not evaluated; see docs/emulator.md):
- the condition's `filter`: `KEY = "VALUE"` terms joined by AND (or spaces), on `metric.type`,
  `resource.type`, `metric.label(s).NAME` and `resource.label(s).NAME` (a quoted NAME too);
  anything else in a filter is refused when the policy is created (400), so that a policy the
  emulator cannot evaluate never passes for one it does;
- the aggregation: the points' values summed over the alignment period (`alignmentPeriod`,
  60 s by default; ALIGN_COUNT, ALIGN_SUM, ALIGN_DELTA and ALIGN_COUNT_TRUE all sum a count
  metric's points), per time series, or per `groupByFields` with a cross-series reducer;
- `comparison` (GT, GE, LT, LE, EQ, NE) with `thresholdValue`, held for `duration`;
- no data in the window: the incident closes with `evaluationMissingData`
  EVALUATION_MISSING_DATA_INACTIVE, stays open with EVALUATION_MISSING_DATA_ACTIVE, and otherwise
  stays open until `alertStrategy.autoClose` (7 days by default) passes without data.

Notifications: a `webhook_tokenauth` channel gets Google's webhook payload (schema version 1.2,
the `incident` object as Google's documentation and published samples show it) as a JSON POST,
only to a loopback URL (the emulator sends nothing off this machine; another URL is recorded as
not sent); an `email` channel, and every other type, is recorded, not sent. Each notification is
in `state_json` and the journal (`monitoring.notification`), with when it was made."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError

if TYPE_CHECKING:
    from gcp_emulator.monitoring.models import Monitoring, Point

TERM = re.compile(
    r'\s*(?P<key>[a-z_]+(?:\.[a-z_]+)*(?:\."?[A-Za-z0-9_./-]+"?)?)\s*=\s*"(?P<value>[^"]*)"\s*'
)
COMPARE = {
    "COMPARISON_GT": lambda v, t: v > t,
    "COMPARISON_GE": lambda v, t: v >= t,
    "COMPARISON_LT": lambda v, t: v < t,
    "COMPARISON_LE": lambda v, t: v <= t,
    "COMPARISON_EQ": lambda v, t: v == t,
    "COMPARISON_NE": lambda v, t: v != t,
}
SUMMING = {"", "ALIGN_NONE", "ALIGN_COUNT", "ALIGN_SUM", "ALIGN_DELTA", "ALIGN_COUNT_TRUE"}
DISPLAY = {
    "run.googleapis.com/job/completed_execution_count": "Completed execution count",
    "cloud_run_job": "Cloud Run Job",
}
TICK = 1.0  # seconds between evaluations for closing incidents and durations


def seconds(value: str | None, default: float) -> float:
    if not value:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s", value.strip())
    if not m:
        raise ApiError(400, "invalid", f'Invalid duration: {value!r} (like "60s").')
    return float(m[1])


def parse_filter(text: str) -> dict[str, str]:
    """A filter's equality terms as {key: value}, keys normalized to metric.type, resource.type,
    metric.labels.NAME and resource.labels.NAME; ApiError for anything else."""
    terms: dict[str, str] = {}
    rest = text.strip()
    while rest:
        m = TERM.match(rest)
        if not m:
            raise ApiError(
                400,
                "invalid",
                f'The emulator evaluates filters of KEY = "VALUE" terms joined by AND only, '
                f"not: {rest!r}.",
            )
        key = m["key"].replace('"', "")
        key = re.sub(r"^(metric|resource)\.label\.", r"\1.labels.", key)
        if not re.fullmatch(r"(metric|resource)\.(type|labels\.[A-Za-z0-9_./-]+)", key):
            raise ApiError(400, "invalid", f"The emulator does not evaluate filter key {key!r}.")
        terms[key] = m["value"]
        rest = rest[m.end() :]
        if rest.startswith("AND "):
            rest = rest[4:]
    if "metric.type" not in terms:
        raise ApiError(400, "invalid", "A condition's filter must name a metric.type.")
    return terms


def check_conditions(conditions: list[dict[str, Any]]) -> None:
    """At create and patch: each condition is one the emulator evaluates."""
    for c in conditions:
        threshold = c.get("conditionThreshold")
        if threshold is None:
            continue  # kept, never evaluated (docs/emulator.md)
        parse_filter(threshold.get("filter", ""))
        if threshold.get("comparison", "COMPARISON_GT") not in COMPARE:
            raise ApiError(400, "invalid", f"Unknown comparison {threshold.get('comparison')!r}.")
        for agg in threshold.get("aggregations") or []:
            seconds(agg.get("alignmentPeriod"), 60)
            if agg.get("perSeriesAligner", "") not in SUMMING:
                raise ApiError(
                    400,
                    "invalid",
                    f"The emulator evaluates count aligners only, not {agg['perSeriesAligner']!r}.",
                )
        seconds(threshold.get("duration"), 0)


def matches(terms: dict[str, str], point: Point) -> bool:
    for key, value in terms.items():
        if key == "metric.type":
            got = point.metric
        elif key == "resource.type":
            got = point.resource_type
        elif key.startswith("metric.labels."):
            got = point.labels.get(key.removeprefix("metric.labels."))
        else:
            got = point.resource.get(key.removeprefix("resource.labels."))
        if got != value:
            return False
    return True


@dataclass
class Incident:
    policy: str
    condition: dict[str, Any]
    series: tuple[tuple[str, str], ...]
    metric: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    value: float
    started: float = field(default_factory=clock.now)
    ended: float | None = None
    last_data: float = field(default_factory=clock.now)
    id: str = field(default_factory=lambda: "0." + secrets.token_hex(6))


class Alerting:
    """The evaluation loop, the incidents, the notifications."""

    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring
        self.incidents: list[Incident] = []
        self.notifications: list[dict[str, Any]] = []
        self.pending: dict[tuple[Any, ...], float] = {}  # a crossing held, since when
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop (a unit test): no ticker
            if self._ticker is None or self._ticker.done():
                self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.evaluate()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> None:
        now = clock.now() if now is None else now
        for policy in list(self.monitoring.policies.values()):
            if not policy.get("enabled", True):
                continue
            for condition in policy.get("conditions") or []:
                if "conditionThreshold" in condition:
                    self._condition(policy, condition, now)

    def _condition(self, policy: dict[str, Any], condition: dict[str, Any], now: float) -> None:
        threshold = condition["conditionThreshold"]
        terms = parse_filter(threshold.get("filter", ""))
        aggs = threshold.get("aggregations") or [{}]
        agg = aggs[0]
        period = seconds(agg.get("alignmentPeriod"), 60)
        group_by = agg.get("groupByFields") if agg.get("crossSeriesReducer") else None
        compare = COMPARE[threshold.get("comparison", "COMPARISON_GT")]
        limit = float(threshold.get("thresholdValue", 0))
        duration = seconds(threshold.get("duration"), 0)
        values: dict[tuple[tuple[str, str], ...], tuple[float, Point]] = {}
        for p in self.monitoring.points:
            if p.time <= now - period or p.time > now or not matches(terms, p):
                continue
            key = series_key(p, group_by)
            total, _ = values.get(key, (0.0, p))
            values[key] = (total + p.value, p)
        open_here = {
            i.series: i
            for i in self.incidents
            if i.ended is None
            and i.policy == policy["name"]
            and i.condition.get("name") == condition["name"]
        }
        for key, (value, point) in values.items():
            incident = open_here.get(key)
            if incident is not None:
                incident.last_data, incident.value = now, value
            held = (policy["name"], condition["name"], key)
            if not compare(value, limit):
                self.pending.pop(held, None)
                if incident is not None:
                    self._close(policy, incident, now)
                continue
            if incident is not None:
                continue
            since = self.pending.setdefault(held, now)
            if now - since < duration:
                continue
            self.pending.pop(held, None)
            self._open(policy, condition, key, point, value, now)
        missing = threshold.get("evaluationMissingData", "")
        auto_close = seconds((policy.get("alertStrategy") or {}).get("autoClose"), 7 * 86400)
        for key, incident in open_here.items():
            if key in values:
                continue
            stale = now - incident.last_data >= auto_close
            if missing == "EVALUATION_MISSING_DATA_INACTIVE" or (
                missing != "EVALUATION_MISSING_DATA_ACTIVE" and stale
            ):
                self._close(policy, incident, now)

    def _open(
        self,
        policy: dict[str, Any],
        condition: dict[str, Any],
        key: tuple[tuple[str, str], ...],
        point: Point,
        value: float,
        now: float,
    ) -> None:
        incident = Incident(
            policy=policy["name"],
            condition=condition,
            series=key,
            metric=point.metric,
            metric_labels=dict(point.labels),
            resource_type=point.resource_type,
            resource_labels=dict(point.resource),
            value=value,
            started=now,
            last_data=now,
        )
        self.incidents.append(incident)
        self.monitoring.cloud.record(
            "event", event="monitoring.incident", policy=policy["name"], state="open",
            incident=incident.id,
        )  # fmt: skip
        self._notify(policy, incident, "open")

    def _close(self, policy: dict[str, Any], incident: Incident, now: float) -> None:
        incident.ended = now
        self.monitoring.cloud.record(
            "event", event="monitoring.incident", policy=policy["name"], state="closed",
            incident=incident.id,
        )  # fmt: skip
        prompts = (policy.get("alertStrategy") or {}).get("notificationPrompts")
        if prompts is None or "CLOSED" in prompts:
            self._notify(policy, incident, "closed")

    # -- notifications -----------------------------------------------------------------------

    def _notify(self, policy: dict[str, Any], incident: Incident, state: str) -> None:
        payload = webhook_payload(self.monitoring.cloud.project, policy, incident, state)
        for name in policy.get("notificationChannels") or []:
            channel = self.monitoring.channels.get(name)
            if channel is None or not channel.get("enabled", True):
                continue
            kind = channel.get("type", "")
            labels = channel.get("labels") or {}
            note: dict[str, Any] = {
                "time": clock.now(),
                "channel": name,
                "type": kind,
                "state": state,
                "incident": incident.id,
                "policy": policy["name"],
                "sent": False,
            }
            if kind in ("webhook_tokenauth", "webhook_basicauth"):
                url = labels.get("url", "")
                note["url"] = url
                if loopback(url):
                    note["sent"] = None  # under way
                    self._spawn(self._post(url, payload, note, labels))
                else:
                    note["error"] = "not sent: the emulator posts only to a loopback address"
            elif kind == "email":
                note["to"] = labels.get("email_address", "")
                note["subject"] = subject(policy, incident, state)
            self.notifications.append(note)
            self.monitoring.cloud.record("event", event="monitoring.notification", **note)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(
        self, url: str, payload: dict[str, Any], note: dict[str, Any], labels: dict[str, str]
    ) -> None:
        import httpx  # here: its import costs the emulator's start-up a tenth of a second

        auth = None
        if labels.get("username"):
            auth = (labels["username"], labels.get("password", ""))
        try:
            async with httpx.AsyncClient(timeout=10, auth=auth) as client:
                r = await client.post(url, json=payload)
            note["status"] = r.status_code
            note["sent"] = 200 <= r.status_code < 300
        except httpx.HTTPError as exc:
            note["sent"] = False
            note["error"] = f"{type(exc).__name__}: {exc}"

    def state_json(self) -> dict[str, Any]:
        return {
            "incidents": [
                {
                    "id": i.id,
                    "policy": i.policy,
                    "state": "open" if i.ended is None else "closed",
                    "started": i.started,
                    "ended": i.ended,
                    "value": i.value,
                    "resource": i.resource_labels,
                }
                for i in self.incidents
            ],
            "notifications": list(self.notifications),
        }


def series_key(point: Point, group_by: list[str] | None) -> tuple[tuple[str, str], ...]:
    """A point's time series (all its labels), or its group under groupByFields."""
    every = {f"metric.labels.{k}": v for k, v in point.labels.items()}
    every |= {f"resource.labels.{k}": v for k, v in point.resource.items()}
    if group_by is None:
        return tuple(sorted(every.items()))
    wanted = [re.sub(r"^(metric|resource)\.label\.", r"\1.labels.", g) for g in group_by]
    return tuple((g, every.get(g, "")) for g in wanted)


def loopback(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def subject(policy: dict[str, Any], incident: Incident, state: str) -> str:
    doc = policy.get("documentation") or {}
    title = doc.get("subject") or policy.get("displayName", "")
    return f"[ALERT - {'Open' if state == 'open' else 'Resolved'}] {title}"


def webhook_payload(
    project: str, policy: dict[str, Any], incident: Incident, state: str
) -> dict[str, Any]:
    """Google's webhook notification, schema version 1.2."""
    condition = incident.condition
    threshold = condition.get("conditionThreshold") or {}
    doc = policy.get("documentation") or {}
    resource_name = incident.resource_labels.get("job_name", "")
    verb = "is above" if threshold.get("comparison", "COMPARISON_GT") in (
        "COMPARISON_GT", "COMPARISON_GE") else "crossed"  # fmt: skip
    metric_name = DISPLAY.get(incident.metric, incident.metric)
    resource_type = DISPLAY.get(incident.resource_type, incident.resource_type)
    summary = (
        f"{metric_name} for {resource_name} with metric labels "
        f"{incident.metric_labels} {verb} the threshold of {threshold.get('thresholdValue', 0)} "
        f"with a value of {incident.value:g}."
    )
    if state == "closed":
        summary = f"{metric_name} for {resource_name} returned to normal."
    return {
        "version": "1.2",
        "incident": {
            "incident_id": incident.id,
            "scoping_project_id": project,
            "url": f"https://console.cloud.google.com/monitoring/alerting/incidents/{incident.id}?project={project}",
            "severity": policy.get("severity", "No severity"),
            "started_at": int(incident.started),
            "ended_at": None if incident.ended is None else int(incident.ended),
            "state": state,
            "summary": summary,
            "observed_value": f"{incident.value:g}",
            "resource": {"type": incident.resource_type, "labels": incident.resource_labels},
            "resource_type_display_name": resource_type,
            "resource_id": "",
            "resource_display_name": resource_name,
            "resource_name": f"{project} {DISPLAY.get(incident.resource_type, '')} labels "
            f"{incident.resource_labels}",
            "metric": {
                "type": incident.metric,
                "displayName": DISPLAY.get(incident.metric, incident.metric),
                "labels": incident.metric_labels,
            },
            "metadata": {"system_labels": {}, "user_labels": {}},
            "policy_name": policy.get("displayName", ""),
            "policy_user_labels": policy.get("userLabels") or {},
            "documentation": {
                "content": doc.get("content", ""),
                "mime_type": doc.get("mimeType", "text/markdown"),
                "subject": doc.get("subject", ""),
            },
            "condition": {
                "name": condition.get("name", ""),
                "displayName": condition.get("displayName", ""),
                "conditionThreshold": threshold,
            },
            "condition_name": condition.get("displayName", ""),
            "threshold_value": str(threshold.get("thresholdValue", 0)),
        },
    }

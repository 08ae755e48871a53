"""Cloud Scheduler's state and behaviour: HTTP jobs that fire on their cron in their time zone
and call their target with an OAuth token of their service account, retried on failure
(docs/google-cloud.md, "Cloud Run jobs and Cloud Scheduler").

- Fire times: the orchestrator's own rule (orchestrator/slot.py: Debian cron's, in absolute
  time), so that on a daylight-saving day the scheduler and the job agree on a slot by
  construction. Google documents only that such days "can cause jobs to run or not run
  unexpectedly": what the real scheduler does then is not known (docs/emulator.md).
- A delivery: the target's method and URI, its headers, `User-Agent: Google-Cloud-Scheduler`,
  `X-CloudScheduler: true`, `X-CloudScheduler-JobName`, `X-CloudScheduler-ScheduleTime`, and
  `Authorization: Bearer` a token of the job's service account; it reaches the emulator's own
  front (the Cloud Run API among others) in process, as the real one reaches Google's. A 2xx
  answer within `attemptDeadline` is success; else it is retried `retryCount` times, waiting
  minBackoff doubling `maxDoublings` times up to maxBackoff, never past the next scheduled time.
- The clock: real (a fire time that passes fires), or, for tests, the test clock: only what a
  test asks fires (`fire`: the slot of time T, now; a duplicate, a late or a dropped delivery).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import stamp

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud

logger = logging.getLogger(__name__)
SLOT_PY = Path(__file__).resolve().parents[2] / "orchestrator" / "slot.py"
DEFAULT_RETRY = {
    "retryCount": 0,
    "maxRetryDuration": "0s",
    "minBackoffDuration": "5s",
    "maxBackoffDuration": "3600s",
    "maxDoublings": 5,
}
DEFAULT_DEADLINE = "180s"
# a failed attempt's status (google.rpc.Code) by the HTTP answer (0: none, in time)
RPC_CODE = {0: 4, 400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 503: 14}


def _slot_module() -> Any:
    spec = importlib.util.spec_from_file_location("orchestrator_slot", SLOT_PY)
    if spec is None or spec.loader is None:  # pragma: no cover: the file is in the repository
        raise RuntimeError(f"cannot load {SLOT_PY}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SLOT = _slot_module()


def seconds(duration: str | int | float | None, default: float = 0.0) -> float:
    """A protobuf Duration in JSON ("3.5s") as seconds."""
    if duration in (None, ""):
        return default
    if isinstance(duration, (int, float)):
        return float(duration)
    hit = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(duration))
    if hit is None:
        raise ApiError(400, "invalid", f"Invalid duration {duration!r}: like 180s.")
    return float(hit[1])


def parse_time(value: str | float | int) -> float:
    """A test's `at`: seconds since the epoch, or an RFC 3339 time with its offset."""
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass
class Delivery:
    """One delivery of a fire time: its attempts' outcomes."""

    job: str
    schedule_time: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SchedulerJob:
    name: str  # projects/P/locations/L/jobs/J
    schedule: str
    time_zone: str
    target: dict[str, Any]
    retry: dict[str, Any]
    attempt_deadline: str = DEFAULT_DEADLINE
    description: str = ""
    state: str = "ENABLED"
    updated: str = field(default_factory=stamp)
    last_attempt: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    next_fire: float = 0.0

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[1]


class Scheduler:
    """Cloud Scheduler's backend: jobs by name, the clock that fires them, their deliveries."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.jobs: dict[str, SchedulerJob] = {}
        self.deliveries: list[Delivery] = []
        self.test_clock = cloud.cfg.scheduler_clock == "test"
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- jobs --------------------------------------------------------------------------------

    def job(self, name: str) -> SchedulerJob:
        job = self.jobs.get(name)
        if job is None:
            raise ApiError(404, "notFound", "Job not found.")
        return job

    def check(self, schedule: str, zone: str) -> None:
        try:
            SLOT.slot_and_next(schedule, zone, clock.now())
        except Exception as exc:  # cronsim's errors, a bad zone
            raise ApiError(
                400,
                "invalid",
                f"Schedule or time zone is invalid: {schedule!r} in {zone!r} ({exc}).",
            ) from None

    def put(self, job: SchedulerJob) -> SchedulerJob:
        self.check(job.schedule, job.time_zone)
        job.next_fire = self.next_after(job, clock.now())
        job.updated = stamp()
        self.jobs[job.name] = job
        self.start()
        return job

    def delete(self, name: str) -> None:
        self.job(name)
        del self.jobs[name]

    def next_after(self, job: SchedulerJob, epoch: float) -> float:
        _, following = SLOT.slot_and_next(job.schedule, job.time_zone, epoch)
        return following.timestamp()

    def slot_at(self, job: SchedulerJob, epoch: float) -> float:
        latest, _ = SLOT.slot_and_next(job.schedule, job.time_zone, epoch)
        return latest.timestamp()

    # -- the clock ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """The real clock: each enabled job fires at its fire times (none on the test clock)."""
        while True:
            await asyncio.sleep(0.5)
            if self.test_clock:
                continue
            for job, schedule_time in self.due(clock.now()):
                self.spawn(self.deliver(job, schedule_time))

    def due(self, now: float) -> list[tuple[SchedulerJob, float]]:
        """The enabled jobs whose fire time has come, with it; each then waits for its next
        fire time after now (fire times missed meanwhile are not caught up)."""
        out = []
        for job in list(self.jobs.values()):
            if job.state == "ENABLED" and job.next_fire and job.next_fire <= now:
                out.append((job, job.next_fire))
                job.next_fire = self.next_after(job, now)
        return out

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def find(self, job: str) -> SchedulerJob:
        """A job by its full name or, when one job has it, its short one (a test's hook)."""
        if job in self.jobs:
            return self.jobs[job]
        hits = [j for j in self.jobs.values() if j.short == job]
        if len(hits) != 1:
            raise ApiError(404, "notFound", f"Job {job!r} not found (or not one).")
        return hits[0]

    def set_clock(self, mode: str) -> None:
        """The test clock, or the real one again: fire times that passed meanwhile are not
        caught up (each job fires next at its first fire time from now)."""
        if mode not in ("real", "test"):
            raise ValueError("mode must be real or test")
        self.test_clock = mode == "test"
        now = clock.now()
        for job in self.jobs.values():
            job.next_fire = self.next_after(job, now)

    def fire(
        self,
        job: SchedulerJob,
        at: float | None = None,
        delay: float = 0.0,
        copies: int = 1,
        drop: bool = False,
    ) -> tuple[float, list[Delivery]]:
        """The test clock's hook: deliver the slot of time `at` (now, by default) now, or `delay`
        seconds late; `copies` times (Cloud Scheduler delivers at least once); or not at all
        (`drop`: the slot's delivery is lost). The schedule time sent is the slot's."""
        schedule_time = self.slot_at(job, at if at is not None else clock.now())
        if drop:
            self.cloud.record(
                "event",
                event="scheduler.dropped",
                job=job.short,
                schedule_time=stamp(schedule_time),
            )
            return schedule_time, []
        out = []
        for _ in range(max(1, copies)):
            delivery = Delivery(job.name, schedule_time)
            self.deliveries.append(delivery)
            out.append(delivery)
            self.spawn(self._later(job, delivery, delay))
        return schedule_time, out

    async def fire_hook(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /_emulator/scheduler/fire {"job", "at"?, "delay"?, "copies"?, "drop"?,
        "wait"?: seconds to wait for the deliveries' last attempts}: what was delivered."""
        job = self.find(str(body["job"]))
        at = parse_time(body["at"]) if body.get("at") is not None else None
        schedule_time, deliveries = self.fire(
            job,
            at=at,
            delay=float(body.get("delay", 0)),
            copies=int(body.get("copies", 1)),
            drop=bool(body.get("drop", False)),
        )
        wait = float(body.get("wait", 0))
        if wait > 0 and deliveries:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(d.done.wait() for d in deliveries)), wait)
        return {
            "schedule_time": stamp(schedule_time),
            "deliveries": [delivery_json(d) for d in deliveries],
        }

    async def _later(self, job: SchedulerJob, delivery: Delivery, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self.deliver(job, delivery.schedule_time, delivery)

    async def run_now(self, job: SchedulerJob) -> None:
        """jobs.run: a delivery now, whatever the schedule says (its schedule time: now)."""
        self.spawn(self.deliver(job, clock.now()))

    # -- a delivery --------------------------------------------------------------------------

    async def deliver(
        self, job: SchedulerJob, schedule_time: float, delivery: Delivery | None = None
    ) -> Delivery:
        """The call to the job's target, retried per its retryConfig until the next fire time."""
        if delivery is None:
            delivery = Delivery(job.name, schedule_time)
            self.deliveries.append(delivery)
        retry = {**DEFAULT_RETRY, **job.retry}
        count = int(retry.get("retryCount") or 0)
        low = seconds(retry.get("minBackoffDuration"), 5)
        cap = seconds(retry.get("maxBackoffDuration"), 3600)
        doublings = int(retry.get("maxDoublings") or 0)
        limit = seconds(retry.get("maxRetryDuration"), 0)
        first = clock.now()
        stop_at = self.next_after(job, schedule_time)
        attempt = 0
        while True:
            outcome = await self.attempt(job, schedule_time, attempt)
            delivery.attempts.append(outcome)
            if outcome["ok"]:
                break
            wait = backoff(attempt, low, cap, doublings)
            now = clock.now()
            if not may_retry(attempt, count, limit, now + wait - first) or now + wait >= stop_at:
                break  # and never past the next scheduled time
            await asyncio.sleep(wait)
            attempt += 1
        delivery.done.set()
        return delivery

    async def attempt(
        self, job: SchedulerJob, schedule_time: float, attempt: int
    ) -> dict[str, Any]:
        target = job.target
        headers = {
            **(target.get("headers") or {}),
            "User-Agent": "Google-Cloud-Scheduler",
            "X-CloudScheduler": "true",
            "X-CloudScheduler-JobName": job.short,
            "X-CloudScheduler-ScheduleTime": stamp(schedule_time),
        }
        oauth = target.get("oauthToken") or {}
        if oauth.get("serviceAccountEmail"):
            token = self.cloud.iam.token_for(f"serviceAccount:{oauth['serviceAccountEmail']}")
            headers["Authorization"] = f"Bearer {token}"
        body = target_body(target)
        job.last_attempt = stamp()
        started = clock.now()
        status, text = 0, ""
        import httpx  # here: its import costs the emulator's start-up a tenth of a second

        deadline = seconds(job.attempt_deadline, 180)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.cloud.app))

        async def call() -> httpx.Response:
            try:
                return await client.request(
                    target.get("httpMethod") or "POST", target["uri"], headers=headers, content=body
                )
            finally:
                await client.aclose()

        # past the deadline the scheduler stops waiting; the call itself goes on (its target
        # may act on it: the answer is lost, not the call)
        request = self.spawn(call())
        done, _ = await asyncio.wait({request}, timeout=deadline)
        if not done:
            text = f"no answer within the attempt deadline ({job.attempt_deadline})"
        elif isinstance(request.exception(), httpx.HTTPError):
            exc = request.exception()
            text = f"{type(exc).__name__}: {exc}"
        else:
            r = request.result()
            status, text = r.status_code, r.text[:500]
        ok = 200 <= status < 300
        job.status = {} if ok else {"code": RPC_CODE.get(status, 2), "message": text or "no answer"}
        outcome = {
            "attempt": attempt,
            "status": status,
            "ok": ok,
            "time": started,
            "duration": round(clock.now() - started, 3),
            "answer": text,
        }
        self.cloud.record(
            "event",
            event="scheduler.delivery",
            job=job.short,
            schedule_time=stamp(schedule_time),
            attempt=attempt,
            status=status,
        )
        return outcome

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._tasks):
            task.cancel()

    def state_json(self) -> dict[str, Any]:
        return {
            "scheduler": {
                "test_clock": self.test_clock,
                "jobs": {
                    j.short: {"state": j.state, "schedule": j.schedule, "time_zone": j.time_zone}
                    for j in self.jobs.values()
                },
                "deliveries": [delivery_json(d) for d in self.deliveries],
            }
        }


def backoff(retry: int, low: float, cap: float, doublings: int) -> float:
    """The wait before retry number `retry` (0: the first): minBackoffDuration, doubled
    maxDoublings times, then growing by the last doubling's step, never above
    maxBackoffDuration (RetryConfig's own example: 10 s, 300 s and 3 doublings retry after 10,
    20, 40, 80, 160, 240, 300, 300, ... seconds)."""
    if retry <= doublings:
        wait = low * 2**retry
    else:
        wait = low * 2**doublings * (retry - doublings + 1)
    return min(cap, wait)


def may_retry(retries: int, count: int, limit: float, elapsed: float) -> bool:
    """Whether a failed attempt is tried again, after `retries` retries and `elapsed` seconds
    from the first attempt to the retry: by retryCount, by maxRetryDuration (0: no limit), and,
    with both, until both are reached; with neither, never."""
    count_left = retries < count
    time_left = limit > 0 and elapsed <= limit
    if limit == 0:
        return count_left
    if count == 0:
        return time_left
    return count_left or time_left


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "job": d.job.rsplit("/", 1)[1],
        "schedule_time": stamp(d.schedule_time),
        "attempts": [{k: a[k] for k in ("attempt", "status", "ok", "answer")} for a in d.attempts],
        "done": d.done.is_set(),
    }


def target_body(target: dict[str, Any]) -> bytes:
    """The body a target sends (base64 in the job), for POST, PUT and PATCH only."""
    data = target.get("body")
    return base64.b64decode(data) if data else b""

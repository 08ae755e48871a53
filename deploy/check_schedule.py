"""deploy/check_schedule.py SCHEDULE SECONDS: the check's schedule: SCHEDULE (unix-cron, as Cloud
Scheduler takes it) with every fire time moved SECONDS later, rounded up to whole minutes, in the
same time zone, so that `entrypoint.sh check` runs once after each slot, once that slot's
START_DEADLINE and CHECK_MARGIN have passed.

Prints the shifted schedule, or one line on stderr and exit 2 when it cannot be one cron line
(the shift takes some of a day's fire times past midnight and not others, or past midnight on a
schedule tied to days of the month) or when slots come closer together than SECONDS (the check
of a slot would run after the next slot had replaced its record on the VM): set CHECK_SCHEDULE
in deploy.env then (or CHECK_SCHEDULE=none, and no check runs).

Python's standard library only: deploy.sh runs where gcloud does, and gcloud needs Python.
tests/test_deploy_settings.py compares what it gives with cronsim's fire times over a year."""

from __future__ import annotations

import itertools
import math
import sys

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
NAMES = [
    {},
    {},
    {},
    {m: i + 1 for i, m in enumerate(MONTHS)},
    {d: i for i, d in enumerate(DAYS)},
]


class CannotShift(Exception):
    pass


def values(field: str, index: int) -> set[int]:
    """The values a cron field stands for (`*`, a, a-b, with /step, lists, names)."""
    lo, hi = BOUNDS[index]
    out: set[int] = set()
    for part in field.lower().split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError(f"step {step_text} in {field!r}")
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = number(a, index), number(b, index)
        else:
            start = number(part, index)
            end = hi if step > 1 else start
        if not (lo <= start <= end <= hi):
            raise ValueError(f"{field!r} is out of {lo}-{hi}")
        out.update(range(start, end + 1, step))
    if index == 4 and 7 in out:  # Sunday is 0 and 7
        out.discard(7)
        out.add(0)
    return out


def number(text: str, index: int) -> int:
    return NAMES[index][text] if text in NAMES[index] else int(text)


def compact(numbers: set[int], lo: int, hi: int) -> str:
    """A cron field for a set: `*`, or ranges and values joined by commas."""
    if numbers == set(range(lo, hi + 1)):
        return "*"
    ordered = sorted(numbers)
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    if len(ordered) > 2 and len(steps) == 1 and (step := steps.pop()) > 1:
        return f"{ordered[0]}-{ordered[-1]}/{step}"  # every STEP from the first to the last
    parts: list[str] = []
    run: list[int] = []
    for n in [*ordered, None]:
        if run and (n is None or n != run[-1] + 1):
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
            run = []
        if n is not None:
            run.append(n)
    return ",".join(parts)


def shifted(schedule: str, seconds: int) -> str:
    fields = schedule.split()
    if len(fields) != 5:
        raise CannotShift(f"SCHEDULE '{schedule}' is not five cron fields")
    minute, hour, dom, month, dow = fields
    try:
        times = sorted(h * 60 + m for h in values(hour, 1) for m in values(minute, 0))
        days = values(dow, 4)
        values(dom, 2), values(month, 3)
    except ValueError as exc:
        raise CannotShift(f"SCHEDULE '{schedule}': {exc}") from None
    shift = math.ceil(seconds / 60)
    every_day = dom == "*" and month == "*" and days == set(range(7))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    gaps.append(times[0] + 1440 - times[-1])  # from a day's last to the next day's first
    if min(gaps) <= shift:
        raise CannotShift(
            f"SCHEDULE '{schedule}' fires {min(gaps)} minutes apart, and a slot's check runs "
            f"{shift} minutes after it (START_DEADLINE + CHECK_MARGIN): by then the next slot has "
            "replaced its record on the VM. Lower START_DEADLINE (or CHECK_MARGIN), or set "
            "CHECK_SCHEDULE=none (no check: a missed slot is not reported)"
        )
    moved = [t + shift for t in times]
    crossing = [t >= 1440 for t in moved]
    if any(crossing) and not every_day:
        if not all(crossing):
            raise CannotShift(
                f"SCHEDULE '{schedule}' moved {shift} minutes later puts some of a day's fire "
                "times on the next day and not others: no one cron line says that. Set "
                "CHECK_SCHEDULE"
            )
        if dom != "*" or month != "*":
            raise CannotShift(
                f"SCHEDULE '{schedule}' moved {shift} minutes later moves into the next day of "
                "the month (or the next month): no cron line says that. Set CHECK_SCHEDULE"
            )
        if dow != "*":
            days = {(d + 1) % 7 for d in days}
            dow = compact(days, 0, 6)
    day_times = {t % 1440 for t in moved}
    hours = {t // 60 for t in day_times}
    minutes = {t % 60 for t in day_times}
    if len(day_times) != len(hours) * len(minutes):
        raise CannotShift(
            f"SCHEDULE '{schedule}' moved {shift} minutes later is not one cron line (its times "
            "are no longer every listed minute of every listed hour). Set CHECK_SCHEDULE"
        )
    return " ".join([compact(minutes, 0, 59), compact(hours, 0, 23), dom, month, dow])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: check_schedule.py SCHEDULE SECONDS", file=sys.stderr)
        return 2
    try:
        print(shifted(argv[0], int(argv[1])))
    except CannotShift as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

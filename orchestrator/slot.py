"""The scheduled slot of an execution: the latest instant at or before now at which SCHEDULE
(unix-cron, the syntax Cloud Scheduler takes) fires in TIME_ZONE (IANA), and the next one.

    python3 slot.py SCHEDULE TIME_ZONE [EPOCH]

prints one line of four fields, separated by spaces (EPOCH: now, if not given):

    SLOT_EPOCH SLOT_ISO NEXT_EPOCH NEXT_ISO

the ISO times in TIME_ZONE with its offset (2026-12-02T09:00:00+09:00), and, when the zone
changes its clock for daylight saving in the coming year at a time the schedule fires, a second
line `dst: <what happens>` (the orchestrator warns once). A bad schedule or zone, or a python3
without cronsim, is one line on stderr and exit 2.

The fire times are instants, in one increasing sequence: slot(t) <= t < next(slot(t)) for every
t. cronsim gives the schedule's wall-clock times (as naive datetimes: no time zone), and each is
placed in absolute time by the rule of Debian's cron, which cronsim follows too
(docs/orchestrator.md, "Daylight saving"): a schedule at fixed times (neither its minute nor its
hour field starts with `*`) fires once at a wall-clock time the clock repeats (its first
occurrence), and at the end of the gap for one the clock skips; a schedule with `*` in its minute
or hour fires at both occurrences of a repeated time and not in a skipped one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

try:
    from cronsim import CronSim, CronSimError
except ModuleNotFoundError:  # by hand, with a python3 that is not the project's
    print(
        f"cronsim is not installed for {sys.executable}, and SCHEDULE needs it: run "
        "entrypoint.sh from the checkout with the project's environment (uv run ./entrypoint.sh),"
        " or install it (python3 -m pip install cronsim==2.8)",
        file=sys.stderr,
    )
    sys.exit(2)

SECOND = timedelta(seconds=1)


def fixed_time(schedule: str) -> bool:
    """True for a schedule at fixed times: neither its minute nor its hour field starts with *."""
    fields = schedule.split()
    return len(fields) == 5 and not fields[0].startswith("*") and not fields[1].startswith("*")


def wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """The wall-clock time of an instant in tz, as a naive datetime."""
    return instant.astimezone(tz).replace(tzinfo=None)


def instants(when: datetime, tz: ZoneInfo, fixed: bool) -> list[datetime]:
    """The instants (UTC) at which the wall-clock time `when` (naive) fires in tz."""
    first = when.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = when.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if wall(first, tz) == when:  # the time exists
        if first == second or fixed:
            return [first]
        return sorted({first, second})  # the clock repeats it: both, for a schedule with *
    if not fixed:
        return []  # skipped
    # skipped: a fixed-time schedule fires when the clock jumps past it (the first instant whose
    # wall-clock time is after it), which lies between the two readings of the time
    lo, hi = sorted((int(first.timestamp()), int(second.timestamp())))
    while lo < hi:
        mid = (lo + hi) // 2
        if wall(datetime.fromtimestamp(mid, UTC), tz) > when:
            hi = mid
        else:
            lo = mid + 1
    return [datetime.fromtimestamp(lo, UTC)]


def slot_and_next(schedule: str, zone: str, epoch: float) -> tuple[datetime, datetime]:
    """(the latest fire instant at or before epoch, the first after it), in zone."""
    tz = ZoneInfo(zone)
    fixed = fixed_time(schedule)
    now = datetime.fromtimestamp(int(epoch), UTC)
    here, shift = wall(now, tz), shift_near(now, tz)
    latest = _search(schedule, tz, fixed, here + shift + SECOND, lambda i: i <= now, max, shift)
    following = _search(schedule, tz, fixed, here - shift, lambda i: i > now, min, shift)
    return latest.astimezone(tz), following.astimezone(tz)


def shift_near(instant: datetime, tz: ZoneInfo) -> timedelta:
    """How far tz's offset moves within a day of instant (0 away from a daylight-saving change):
    wall-clock times further apart than this are in the same order as their instants."""
    offsets = [(instant + timedelta(days=d)).astimezone(tz).utcoffset() for d in (-1, 0, 1)]
    return max(offsets) - min(offsets)  # type: ignore[operator,type-var]


def _search(
    schedule: str,
    tz: ZoneInfo,
    fixed: bool,
    start: datetime,
    wanted: Callable[[datetime], bool],
    best: Callable[..., datetime],
    shift: timedelta,
) -> datetime:
    """The best (max or min) instant that is `wanted`, walking the wall-clock fire times from
    start (backwards for max, forwards for min) until none further on can beat the best found:
    past twice the offset's shift near it."""
    found: datetime | None = None
    reached: datetime | None = None  # the wall-clock time that gave the first wanted instant
    for when in CronSim(schedule, start, reverse=best is max):
        if reached is not None and abs(when - reached) > 2 * shift:
            break
        hits = [i for i in instants(when, tz, fixed) if wanted(i)]
        if hits:
            found = best([*hits, found] if found is not None else hits)
            if reached is None:
                reached, shift = when, max(shift, shift_near(hits[0], tz))
    if found is None:  # cronsim gives up after 50 years
        raise StopIteration
    return found


def clock_changes(tz: ZoneInfo, epoch: float, days: int) -> Iterator[tuple[datetime, timedelta]]:
    """The instants in the next `days` at which tz's offset changes, with the change (+1 h when
    the clock jumps forward)."""
    day = datetime.fromtimestamp(int(epoch), UTC)
    for _ in range(days):
        after = day + timedelta(days=1)
        old, new = offset(day, tz), offset(after, tz)
        if old != new:
            lo, hi = int(day.timestamp()), int(after.timestamp())
            while lo < hi:  # the first second with the new offset
                mid = (lo + hi) // 2
                if offset(datetime.fromtimestamp(mid, UTC), tz) == new:
                    hi = mid
                else:
                    lo = mid + 1
            yield datetime.fromtimestamp(lo, UTC), new - old
        day = after


def offset(instant: datetime, tz: ZoneInfo) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def dst_hazard(schedule: str, zone: str, epoch: float, days: int = 366) -> str | None:
    """What the first daylight-saving change in the next `days` at which the schedule fires in
    the skipped or repeated wall-clock times does to it, or None when none does."""
    tz = ZoneInfo(zone)
    fixed = fixed_time(schedule)
    for change, shift in clock_changes(tz, epoch, days):
        start = wall(change - SECOND, tz) + SECOND  # the wall clock's time at the change
        end = start + abs(shift)
        if shift < timedelta(0):  # the clock goes back: the hour before the change repeats
            start, end = start - abs(shift), start
        when = next(iter(CronSim(schedule, start - SECOND)))
        if when >= end:
            continue
        if shift > timedelta(0):
            what = "skips"
            outcome = f"it fires at {end:%H:%M} instead" if fixed else "those times do not fire"
        else:
            what = "repeats"
            outcome = "it fires once, the first time" if fixed else "it fires both times"
        span = f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}"
        return f"in {zone}, the clock {what} {span}, and SCHEDULE fires at {when:%H:%M}: {outcome}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: slot.py SCHEDULE TIME_ZONE [EPOCH]", file=sys.stderr)
        return 2
    schedule, zone = argv[0], argv[1]
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"TIME_ZONE '{zone}' is not an IANA time zone (like Asia/Seoul)", file=sys.stderr)
        return 2
    try:
        epoch = float(argv[2]) if len(argv) == 3 else time.time()
        latest, following = slot_and_next(schedule, zone, epoch)
        hazard = dst_hazard(schedule, zone, epoch)
    except (CronSimError, ValueError) as exc:
        print(f"SCHEDULE '{schedule}' is not a unix-cron schedule ({exc})", file=sys.stderr)
        return 2
    except StopIteration:
        print(f"SCHEDULE '{schedule}' never fires", file=sys.stderr)
        return 2
    print(
        int(latest.timestamp()),
        latest.isoformat(),
        int(following.timestamp()),
        following.isoformat(),
    )
    if hazard:
        print(f"dst: {hazard}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

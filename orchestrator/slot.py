"""The scheduled slot of an execution: the latest time at or before now that SCHEDULE (unix-cron,
the syntax Cloud Scheduler takes) fires in TIME_ZONE (IANA), and the next one.

    python3 slot.py SCHEDULE TIME_ZONE [EPOCH]

prints one line of four fields, separated by spaces (EPOCH: now, if not given):

    SLOT_EPOCH SLOT_ISO NEXT_EPOCH NEXT_ISO

the ISO times in TIME_ZONE with its offset (2026-12-02T09:00:00+09:00). A bad schedule or zone
is one line on stderr and exit 2. Cron expressions and time zones are cronsim's and zoneinfo's:
on a daylight-saving day a time the clock skips fires at the first time after it, and a time the
clock repeats fires once, at its first occurrence (cronsim follows Debian's cron)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError


def slot_and_next(schedule: str, zone: str, epoch: float) -> tuple[datetime, datetime]:
    """(the latest fire time at or before epoch, the first after it), in zone."""
    tz = ZoneInfo(zone)
    now = datetime.fromtimestamp(epoch, UTC).astimezone(tz)
    # reverse iteration yields times strictly before its start: a second later includes now
    latest = next(iter(CronSim(schedule, now + timedelta(seconds=1), reverse=True)))
    following = next(iter(CronSim(schedule, now)))
    return latest.astimezone(tz), following.astimezone(tz)


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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""When each reader is due: SEND_TIME on the column's date (or their digest weekday) in the
reader's own time zone (DELIVERY_TIMING=local) or in TIMEZONE (fixed), and which days' and
weeks' sends are open now."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ..clock import known_zone, wall_clock
from ..columns.digest import period
from ..config import Settings

# The first and the last time zones to reach a calendar day: the Line Islands (UTC+14) and
# Baker Island (UTC-12). A local-time send opens at SEND_TIME in the first and its last
# readers are due 26 hours later.
EARLIEST = dt.timezone(dt.timedelta(hours=14))
LATEST = dt.timezone(dt.timedelta(hours=-12))

# (the reader's stored zone or None, their digest weekday) -> (due, naive UTC; zone used)
DueFor = Callable[[str | None, int], tuple[dt.datetime, str]]


def is_local(settings: Settings) -> bool:
    """Whether readers get their mail at SEND_TIME in their own zone."""
    return settings.delivery_timing == "local"


def zone_of(settings: Settings, stored: str | None) -> str:
    """The zone a reader's mail is timed in: theirs in local mode (a name zoneinfo no longer
    knows falls back), TIMEZONE otherwise or when they chose none."""
    if not is_local(settings):
        return settings.timezone
    return known_zone(stored) or settings.timezone


def due_at(settings: Settings, day: dt.date, stored_zone: str | None) -> tuple[dt.datetime, str]:
    """SEND_TIME on `day` where the reader is (naive UTC), and the zone that was."""
    zone = zone_of(settings, stored_zone)
    return wall_clock(day, settings.send_time, zone), zone


def daily_due(settings: Settings, day: dt.date) -> DueFor:
    """Each reader's due moment for the column of `day`."""
    return lambda zone, _weekday: due_at(settings, day, zone)


def week_of(day: dt.date) -> str:
    """The ISO week a day belongs to, as a digest send names it ("2026-W48")."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def monday_of(week: str) -> dt.date:
    """The Monday of an ISO week named like "2026-W48"."""
    return dt.datetime.strptime(f"{week}-1", "%G-W%V-%u").date()


def digest_title(week: str) -> str:
    """A digest send as people read it: "Weekly digest, 23–29 November 2026" for "2026-W48"."""
    monday = monday_of(week)
    return f"Weekly digest, {period(monday, monday + dt.timedelta(days=6))}"


def digest_due(settings: Settings, week: str) -> DueFor:
    """Each weekly reader's due moment in `week`: SEND_TIME on their weekday, where they are."""
    monday = monday_of(week)
    return lambda zone, weekday: due_at(settings, monday + dt.timedelta(days=weekday - 1), zone)


def opens(settings: Settings, day: dt.date) -> dt.datetime:
    """When the send of `day` starts: SEND_TIME in the earliest zone (local) or TIMEZONE."""
    zone = EARLIEST if is_local(settings) else settings.tz
    return dt.datetime.combine(day, settings.send_time, tzinfo=zone)


def closes(settings: Settings, day: dt.date) -> dt.datetime:
    """When the last reader of `day` is due: SEND_TIME in the latest zone (local)."""
    zone = LATEST if is_local(settings) else settings.tz
    return dt.datetime.combine(day, settings.send_time, tzinfo=zone)


def day_at(settings: Settings, now: dt.datetime) -> dt.date:
    """The day whose send the daily trigger starts at `now`: the date in the earliest zone
    (local) or in TIMEZONE (fixed)."""
    return now.astimezone(EARLIEST if is_local(settings) else settings.tz).date()


def open_days(settings: Settings, now: dt.datetime) -> list[dt.date]:
    """The days whose send should exist at `now`: opened, and not past their last reader's
    due moment plus SEND_GRACE (a column that arrives late still goes out then)."""
    today = day_at(settings, now)
    days = (today - dt.timedelta(days=2), today - dt.timedelta(days=1), today)
    grace = settings.send_grace
    return [d for d in days if opens(settings, d) <= now <= closes(settings, d) + grace]


def open_weeks(settings: Settings, now: dt.datetime) -> list[str]:
    """The ISO weeks whose digest send should exist at `now` (one of their days is open)."""
    return sorted({week_of(day) for day in open_days(settings, now)})


@dataclass(frozen=True)
class Due:
    """A reader's next delivery, for the preferences page."""

    at: dt.datetime  # aware, in the reader's zone
    zone: str


def next_delivery(
    settings: Settings, *, zone: str | None, weekly: bool, weekday: int, now: dt.datetime
) -> Due:
    """The next moment a reader with these choices is mailed (after `now`)."""
    name = zone_of(settings, zone)
    local_now = now.astimezone(dt.UTC).astimezone(ZoneInfo(name))
    day = local_now.date()
    for offset in range(8):
        candidate = day + dt.timedelta(days=offset)
        if weekly and candidate.isoweekday() != weekday:
            continue
        moment = wall_clock(candidate, settings.send_time, name).replace(tzinfo=dt.UTC)
        if moment > now:
            return Due(moment.astimezone(ZoneInfo(name)), name)
    raise AssertionError("a weekday recurs within eight days")

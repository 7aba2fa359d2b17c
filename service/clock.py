"""The one clock: aware UTC for schedules, naive UTC datetimes everywhere in the database."""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo


def now() -> datetime:
    """Now as an aware UTC datetime, for schedules and "what day is it where"."""
    return datetime.now(UTC)


def utcnow() -> datetime:
    """Now in UTC, without tzinfo (SQLite and PostgreSQL store it alike)."""
    return now().replace(tzinfo=None)


# Time zones: what a reader may choose, and a wall-clock moment in one of them.
# Names zoneinfo knows that are not places a reader lives in.
_NOT_PLACES = frozenset({"Factory", "localtime", "posixrules", "leapseconds"})


@functools.cache
def zone_names() -> tuple[str, ...]:
    """Every IANA zone a reader may pick, sorted (the preferences page's list)."""
    return tuple(sorted(zoneinfo.available_timezones() - _NOT_PLACES))


def known_zone(name: str | None) -> str | None:
    """`name` when it is an IANA zone zoneinfo knows (case as the database spells it), else
    None; never raises, whatever a browser or an API client sends."""
    if not name or len(name) > 64:
        return None
    return _by_folded_name().get(name.strip().casefold())


@functools.cache
def _by_folded_name() -> dict[str, str]:
    return {zone.casefold(): zone for zone in zone_names()} | {"utc": "UTC"}


def wall_clock(day: date, at: time, zone: str | tzinfo) -> datetime:
    """`at` on `day` in `zone` as naive UTC, daylight saving handled by zoneinfo: a time that
    does not exist (spring forward) falls after the gap, an ambiguous one (fall back) is its
    first occurrence."""
    tz = ZoneInfo(zone) if isinstance(zone, str) else zone
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)

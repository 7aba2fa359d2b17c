"""The one clock: aware UTC for schedules, naive UTC datetimes everywhere in the database."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """Now as an aware UTC datetime, for schedules and "what day is it where"."""
    return datetime.now(UTC)


def utcnow() -> datetime:
    """Now in UTC, without tzinfo (SQLite and PostgreSQL store it alike)."""
    return now().replace(tzinfo=None)

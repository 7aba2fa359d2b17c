"""The one clock: naive UTC datetimes everywhere in the database."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now in UTC, without tzinfo (SQLite and PostgreSQL store it alike)."""
    return datetime.now(UTC).replace(tzinfo=None)

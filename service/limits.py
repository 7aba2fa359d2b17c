"""Rate limits on what readers (and bots) may do, counted in the database so that every
worker process shares one count."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from .clock import utcnow
from .errors import RateLimited
from .models import RateHit

# The windows the *_PER_HOUR and *_PER_DAY settings count over.
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def check_and_count(
    session: Session, key: str, *, limit: int, window: timedelta, now: datetime | None = None
) -> None:
    """Count one hit on `key`, or raise RateLimited if `limit` were already reached in `window`."""
    now = now or utcnow()
    since = now - window
    _serialise(session, key)
    session.execute(delete(RateHit).where(col(RateHit.key) == key, col(RateHit.at) < since))
    hits = session.exec(
        select(func.count(), func.min(RateHit.at)).where(RateHit.key == key, RateHit.at >= since)
    ).one()
    count, oldest = hits
    if count >= limit:
        retry_after = (oldest + window - now).total_seconds() if oldest else window.total_seconds()
        raise RateLimited(max(1, int(retry_after) + 1))
    session.add(RateHit(key=key[:400], at=now))
    session.flush()


def _serialise(session: Session, key: str) -> None:
    """Make count-then-insert atomic per key until the caller's transaction ends. Under
    PostgreSQL's READ COMMITTED, parallel requests would each count the same committed hits
    and all pass; SQLite needs nothing, as BEGIN IMMEDIATE already serialises writers (db.py)."""
    if session.get_bind().dialect.name == "postgresql":
        session.exec(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))

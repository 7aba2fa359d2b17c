"""Rate limits as token buckets in the database, so that every process shares one count:
one row per key, taken from in one atomic statement."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col

from .clock import utcnow
from .db import driver_run
from .errors import RateLimited
from .models import RateBucket

# The windows the *_PER_HOUR and *_PER_DAY settings count over.
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# No count may refill over a longer window: forget_idle's callers rely on a bucket idle this
# long being full again.
LONGEST_WINDOW = DAY
KEY_LENGTH = 400  # RateBucket.key
# Refills are sums of float products: a bucket that should hold 3 tokens may hold 2.999…
_EPSILON = 1e-6

# INSERT … ON CONFLICT DO UPDATE … RETURNING (PostgreSQL; SQLite ≥ 3.35): the bucket is
# refilled from its stored `tokens` and `updated_at` and taken from in the same statement, so
# two processes can never both spend the last token. On PostgreSQL the row stays locked until
# the caller's transaction ends; SQLite's BEGIN IMMEDIATE (db.py) serialises writers anyway.
# A clock behind the stored `updated_at` (another host's) refills nothing and moves no time back.
_TAKE = """
INSERT INTO rate_buckets ("key", tokens, granted, updated_at)
VALUES (:key, :capacity - :fresh, :fresh, :now)
ON CONFLICT ("key") DO UPDATE SET
    granted = {grant},
    tokens = {refilled} - {grant},
    updated_at = {greatest}(rate_buckets.updated_at, :now)
RETURNING tokens, granted
"""
_DIALECT = {
    "postgresql": {
        "elapsed": "CAST(EXTRACT(EPOCH FROM (CAST(:now AS TIMESTAMP) - rate_buckets.updated_at))"
        " AS DOUBLE PRECISION)",
        "least": "LEAST",
        "greatest": "GREATEST",
        "floor": "FLOOR",
    },
    "sqlite": {
        # Whole seconds, then the microseconds SQLAlchemy stores (YYYY-MM-DD HH:MM:SS.ffffff,
        # db.SQLITE_DATETIME, as db.driver_run writes :now too):
        # julianday()'s doubles are off by tens of microseconds this far from its epoch. The
        # seconds are read without the fraction, which strftime rounds to the millisecond:
        # "…:01.9997" would read as second 02, and the elapsed time gain a whole second.
        "elapsed": "((strftime('%s', substr(:now, 1, 19))"
        " - strftime('%s', substr(rate_buckets.updated_at, 1, 19)))"
        " + (CAST(substr(:now, 21, 6) AS INTEGER)"
        " - CAST(substr(rate_buckets.updated_at, 21, 6) AS INTEGER)) / 1000000.0)",
        "least": "MIN",
        "greatest": "MAX",
        "floor": "CAST",  # of a value ≥ 0, CAST(x AS INTEGER) is its floor
    },
}
_statements: dict[str, str] = {}


@dataclass(frozen=True)
class Take:
    """What one take got: `granted` tokens (0 when fewer than asked for were there) and the
    `tokens` left in the bucket after it."""

    granted: int
    tokens: float


def _statement(dialect: str) -> str:
    """The take in the driver's own parameter style (sqlite3 :name, psycopg %(name)s)."""
    if dialect not in _statements:
        d = _DIALECT[dialect]
        refilled = (
            f"{d['least']}(:capacity, rate_buckets.tokens + :rate * "
            f"{d['greatest']}(0.0, {d['elapsed']}))"
        )
        whole = (
            f"CAST(({refilled}) + {_EPSILON} AS INTEGER)"
            if d["floor"] == "CAST"
            else f"FLOOR(({refilled}) + {_EPSILON})"
        )
        grant = (
            f"(CASE WHEN ({refilled}) + {_EPSILON} >= :least_tokens "
            f"THEN {d['least']}(:want, {whole}) ELSE 0 END)"
        )
        sql = _TAKE.format(grant=grant, refilled=refilled, greatest=d["greatest"])
        if dialect == "postgresql":
            sql = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql)
        _statements[dialect] = sql
    return _statements[dialect]


@dataclass(frozen=True)
class Ask:
    """One take: up to `want` whole tokens (at least `least`, default all of `want`, or none)
    from the bucket `key`, which holds up to `capacity` and refills `per_second`."""

    key: str
    capacity: float
    per_second: float
    want: int = 1
    least: int | None = None


def take(
    session: Session,
    key: str,
    *,
    capacity: float,
    per_second: float,
    want: int = 1,
    least: int | None = None,
    now: datetime | None = None,
) -> Take:
    """Take up to `want` whole tokens (at least `least`, default all of `want`, or none) from
    the bucket `key`, which holds up to `capacity` and refills `per_second`. A key seen for the
    first time starts full. One statement, whatever the bucket's state."""
    [got] = take_all(session, [Ask(key, capacity, per_second, want, least)], now=now)
    return got


def take_all(session: Session, asks: Sequence[Ask], *, now: datetime | None = None) -> list[Take]:
    """Each ask's take, in order, one statement each, through the driver's own cursor
    (db.driver_run: on PostgreSQL one round trip for all of them). A subscribe request takes
    three, and SQLAlchemy's layers around each cost more than the statement."""
    return taken(driver_run(session, take_statements(session, asks, now=now)))


def take_statements(
    session: Session, asks: Sequence[Ask], *, now: datetime | None = None
) -> list[tuple[str, dict[str, object]]]:
    """The statements of take_all, for a caller that runs them with others in one round trip
    (db.driver_run); taken() reads their rows."""
    statement = _statement(session.get_bind().dialect.name)
    moment = now or utcnow()
    return [(statement, _values(ask, moment)) for ask in asks]


def _values(ask: Ask, now: object) -> dict[str, object]:
    least = ask.want if ask.least is None else ask.least
    fresh = min(ask.want, math.floor(ask.capacity + _EPSILON))
    return {
        "key": ask.key[:KEY_LENGTH],
        "capacity": float(ask.capacity),
        "rate": float(ask.per_second),
        "fresh": fresh if fresh >= least else 0,
        "want": ask.want,
        "least_tokens": least,
        "now": now,
    }


def taken(rows: Sequence[list[Any]]) -> list[Take]:
    """What the statements of take_statements took, from their rows (db.driver_run's)."""
    return [_taken(row) for [row] in rows]


def _taken(row: Any) -> Take:
    assert row is not None  # INSERT … RETURNING always returns the bucket's row
    tokens, granted = row
    return Take(granted=int(granted), tokens=float(tokens))


def check_and_count(
    session: Session, key: str, *, limit: int, window: timedelta, now: datetime | None = None
) -> None:
    """Count one hit on `key`, or raise RateLimited (with the seconds until a hit would pass)
    when its bucket is empty: `limit` hits at once, refilled at `limit` per `window`."""
    check_and_count_all(session, [(key, limit, window)], now=now)


def check_and_count_all(
    session: Session, counts: Sequence[tuple[str, int, timedelta]], *, now: datetime | None = None
) -> None:
    """check_and_count for several (key, limit, window) at once: every hit counted, or
    RateLimited for the first whose bucket is empty (the caller's transaction, rolled back,
    then takes back the others)."""
    asks = counting(counts)
    refuse_if_empty(asks, take_all(session, asks, now=now))


def counting(counts: Sequence[tuple[str, int, timedelta]]) -> list[Ask]:
    """The asks that count one hit on each (key, limit, window) of check_and_count_all."""
    for _key, _limit, window in counts:
        if window > LONGEST_WINDOW:
            raise ValueError(f"a {window} window outlasts LONGEST_WINDOW: idle buckets go after it")
    return [Ask(key, limit, limit / window.total_seconds()) for key, limit, window in counts]


def refuse_if_empty(asks: Sequence[Ask], takes: Sequence[Take]) -> None:
    """RateLimited (with the seconds until a hit would pass) for the first ask of counting()
    that got nothing."""
    for ask, got in zip(asks, takes, strict=True):
        if not got.granted:
            wait = (1 - got.tokens) / ask.per_second - _EPSILON
            raise RateLimited(max(1, math.ceil(wait)))


def forget_idle(session: Session, *, idle_for: timedelta, now: datetime) -> int:
    """Delete the buckets nobody has taken from for `idle_for`, which the caller makes at least
    as long as any of them takes to refill: such a bucket is full, and a full bucket is exactly
    what a missing row means (a key seen for the first time starts full), so no limit moves.
    Returns how many went.

    A take racing the delete cannot break a limit either. On PostgreSQL (READ COMMITTED) a
    DELETE that reaches a row a take has just updated waits for the take's transaction, then
    checks its WHERE again on the row as the take left it: `updated_at` is now recent, so the
    spent bucket stays. A take that reaches a row being deleted waits, then inserts a new, full
    bucket: what the deleted row, idle and full, held anyway. SQLite has one writer at a time."""
    cutoff = now - idle_for
    result = session.execute(delete(RateBucket).where(col(RateBucket.updated_at) < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]

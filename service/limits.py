"""Rate limits as token buckets in the database, so that every process shares one count:
one row per key, taken from in one atomic statement."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import Session, col

from .clock import utcnow
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
        # Whole seconds, then the microseconds SQLAlchemy stores (YYYY-MM-DD HH:MM:SS.ffffff):
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
# SQLite keeps SQLAlchemy's DateTime as this text (its `elapsed` above reads it by position).
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


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
    first time starts full. One statement, whatever the bucket's state, run on the session's
    connection through the driver's own cursor: a rate-limited request takes three, and
    SQLAlchemy's compiling, typing and result layers around each cost more than the statement
    (docs/BENCHMARKS.md, G6)."""
    least = want if least is None else least
    fresh = min(want, math.floor(capacity + _EPSILON))
    fresh = fresh if fresh >= least else 0
    connection = session.connection()
    dialect = connection.dialect.name
    moment = now or utcnow()
    values = {
        "key": key[:KEY_LENGTH],
        "capacity": float(capacity),
        "rate": float(per_second),
        "fresh": fresh,
        "want": want,
        "least_tokens": least,
        "now": moment.strftime(_SQLITE_DATETIME) if dialect == "sqlite" else moment,
    }
    cursor = connection.connection.cursor()
    try:
        cursor.execute(_statement(dialect), values)
        row = cursor.fetchone()  # INSERT … RETURNING always returns the bucket's row
        assert row is not None
        tokens, granted = row
    finally:
        cursor.close()
    return Take(granted=int(granted), tokens=float(tokens))


def check_and_count(
    session: Session, key: str, *, limit: int, window: timedelta, now: datetime | None = None
) -> None:
    """Count one hit on `key`, or raise RateLimited (with the seconds until a hit would pass)
    when its bucket is empty: `limit` hits at once, refilled at `limit` per `window`."""
    if window > LONGEST_WINDOW:
        raise ValueError(f"a {window} window outlasts LONGEST_WINDOW: idle buckets go after it")
    per_second = limit / window.total_seconds()
    got = take(session, key, capacity=limit, per_second=per_second, now=now)
    if not got.granted:
        raise RateLimited(max(1, math.ceil((1 - got.tokens) / per_second - _EPSILON)))


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

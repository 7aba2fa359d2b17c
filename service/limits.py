"""Rate limits as token buckets in the database, so that every process shares one count:
one row per key, taken from in one atomic statement."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Float, Integer, String, TextClause, bindparam, text
from sqlmodel import Session

from .clock import utcnow
from .errors import RateLimited

# The windows the *_PER_HOUR and *_PER_DAY settings count over.
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
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
        # julianday()'s doubles are off by tens of microseconds this far from its epoch.
        "elapsed": "((strftime('%s', :now) - strftime('%s', rate_buckets.updated_at))"
        " + (CAST(substr(:now, 21, 6) AS INTEGER)"
        " - CAST(substr(rate_buckets.updated_at, 21, 6) AS INTEGER)) / 1000000.0)",
        "least": "MIN",
        "greatest": "MAX",
        "floor": "CAST",  # of a value ≥ 0, CAST(x AS INTEGER) is its floor
    },
}
_statements: dict[str, TextClause] = {}


@dataclass(frozen=True)
class Take:
    """What one take got: `granted` tokens (0 when fewer than asked for were there) and the
    `tokens` left in the bucket after it."""

    granted: int
    tokens: float


def _statement(dialect: str) -> TextClause:
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
        _statements[dialect] = text(sql).bindparams(
            bindparam("key", type_=String()),
            bindparam("capacity", type_=Float()),
            bindparam("rate", type_=Float()),
            bindparam("fresh", type_=Integer()),
            bindparam("want", type_=Integer()),
            bindparam("least_tokens", type_=Integer()),
            bindparam("now", type_=DateTime()),
        )
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
    first time starts full. One statement, whatever the bucket's state."""
    least = want if least is None else least
    fresh = min(want, math.floor(capacity + _EPSILON))
    fresh = fresh if fresh >= least else 0
    row = (
        session.connection()
        .execute(
            _statement(session.get_bind().dialect.name),
            {
                "key": key[:KEY_LENGTH],
                "capacity": float(capacity),
                "rate": float(per_second),
                "fresh": fresh,
                "want": want,
                "least_tokens": least,
                "now": now or utcnow(),
            },
        )
        .one()
    )
    return Take(granted=int(row.granted), tokens=float(row.tokens))


def check_and_count(
    session: Session, key: str, *, limit: int, window: timedelta, now: datetime | None = None
) -> None:
    """Count one hit on `key`, or raise RateLimited (with the seconds until a hit would pass)
    when its bucket is empty: `limit` hits at once, refilled at `limit` per `window`."""
    per_second = limit / window.total_seconds()
    got = take(session, key, capacity=limit, per_second=per_second, now=now)
    if not got.granted:
        raise RateLimited(max(1, math.ceil((1 - got.tokens) / per_second - _EPSILON)))

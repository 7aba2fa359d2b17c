"""The delivery ledger's writes: claim a batch, renew or release claims, record outcomes.

Each function is one short transaction and one statement per kind of change, never an
ORM object per message: a send of a million readers writes its ledger in batches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import Table, and_, bindparam, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from ..db import transaction
from ..models import Delivery, MailStatus, Subscriber, SubscriberStatus


@dataclass(frozen=True)
class Claim:
    id: int
    subscriber_id: int
    email: str
    name: str
    attempts: int


@dataclass
class Outcomes:
    """What a group of hand-offs came to; written together in one transaction."""

    sent: list[int] = field(default_factory=list)
    retry: list[tuple[int, dt.datetime, str]] = field(default_factory=list)  # id, when, why
    failed: list[tuple[int, str]] = field(default_factory=list)  # id, why: gave up
    bounced: list[tuple[int, int, str]] = field(default_factory=list)  # id, subscriber, 5xx reply

    def __len__(self) -> int:
        return len(self.sent) + len(self.retry) + len(self.failed) + len(self.bounced)


def _claimable(send_id: int, now: dt.datetime):  # type: ignore[no-untyped-def]
    due = and_(col(Delivery.status) == MailStatus.pending, col(Delivery.next_attempt_at) <= now)
    abandoned = and_(col(Delivery.status) == MailStatus.sending, col(Delivery.lease_until) < now)
    return and_(col(Delivery.send_id) == send_id, or_(due, abandoned))


def claim_batch(
    engine: Engine, *, send_id: int, worker: str, now: dt.datetime, limit: int, lease: dt.timedelta
) -> list[Claim]:
    """Lease up to `limit` due rows to `worker`. On PostgreSQL, FOR UPDATE SKIP LOCKED lets
    several workers claim from one send without waiting on or taking each other's rows;
    SQLite has one writer at a time (BEGIN IMMEDIATE), which gives the same guarantee."""
    with transaction(engine) as session:
        ids = list(
            session.exec(
                select(Delivery.id)
                .where(_claimable(send_id, now))
                .order_by(col(Delivery.id))
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return []
        rows = session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids))
            .values(
                status=MailStatus.sending,
                claimed_by=worker,
                lease_until=now + lease,
                attempts=col(Delivery.attempts) + 1,
            )
            .returning(
                col(Delivery.id),
                col(Delivery.subscriber_id),
                col(Delivery.email),
                col(Delivery.name),
                col(Delivery.attempts),
            )
        ).all()
    return sorted((Claim(*row) for row in rows), key=lambda c: c.id)


def renew(engine: Engine, *, worker: str, until: dt.datetime) -> None:
    """Extend this worker's leases so that a slow send is not taken over while alive."""
    with transaction(engine) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.claimed_by) == worker, col(Delivery.status) == MailStatus.sending)
            .values(lease_until=until)
        )


def release(engine: Engine, *, ids: list[int], now: dt.datetime) -> None:
    """Give back claimed rows that were never handed to SMTP (a clean stop)."""
    if not ids:
        return
    with transaction(engine) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids), col(Delivery.status) == MailStatus.sending)
            .values(
                status=MailStatus.pending,
                lease_until=None,
                claimed_by=None,
                next_attempt_at=now,
                attempts=col(Delivery.attempts) - 1,
            )
        )


# The hot path writes through Core statements built once, on a plain connection: the ORM's
# bulk-update bookkeeping and rebuilding statements per call tripled the ledger's cost.
_deliveries: Table = Delivery.__table__  # type: ignore[attr-defined]
_subscribers: Table = Subscriber.__table__  # type: ignore[attr-defined]
_MARK_SENT = (
    update(_deliveries)
    .where(_deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=MailStatus.sent.value, sent_at=bindparam("now"), lease_until=None, last_error=None
    )
)
_MARK_RETRY = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("row_id"))
    .values(
        status=MailStatus.pending.value,
        lease_until=None,
        next_attempt_at=bindparam("when"),
        last_error=bindparam("why"),
    )
)
_MARK_FAILED = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("row_id"))
    .values(status=MailStatus.failed.value, lease_until=None, last_error=bindparam("why"))
)
# A permanent (5xx) refusal marks the reader bounced: later sends skip them.
_SUPPRESS = (
    update(_subscribers)
    .where(
        _subscribers.c.id == bindparam("sub_id"),
        _subscribers.c.status == SubscriberStatus.active.value,
    )
    .values(
        status=SubscriberStatus.bounced.value,
        bounced_at=bindparam("now"),
        updated_at=bindparam("now"),
        bounce_reason=bindparam("why"),
    )
)


def record(engine: Engine, outcomes: Outcomes, now: dt.datetime) -> None:
    """Write a group of outcomes in one transaction (one statement per kind)."""
    gave_up = outcomes.failed + [(i, why) for i, _sub, why in outcomes.bounced]
    with engine.begin() as conn:
        if outcomes.sent:
            conn.execute(_MARK_SENT, {"ids": outcomes.sent, "now": now})
        if outcomes.retry:
            conn.execute(
                _MARK_RETRY,
                [{"row_id": i, "when": when, "why": why} for i, when, why in outcomes.retry],
            )
        if gave_up:
            conn.execute(_MARK_FAILED, [{"row_id": i, "why": why} for i, why in gave_up])
        if outcomes.bounced:
            conn.execute(
                _SUPPRESS,
                [
                    {"sub_id": sub, "why": why[:1000], "now": now}
                    for _i, sub, why in outcomes.bounced
                ],
            )

"""The delivery ledger's writes: claim a batch, renew or release claims, record outcomes.

Each function is one statement per kind of change, never an ORM object per message: a send
of a million readers writes its ledger in batches. Every write after the claim is conditional
on `claimed_by = me AND status = 'sending'`, so a worker that lost its lease (it stalled,
another worker took its rows over) cannot overwrite what the new owner does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Integer, Table, and_, any_, bindparam, exists, func, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from ..db import insert_new
from ..mail.leases import due_or_abandoned, owned_by
from ..models import (
    Bounce,
    BounceKind,
    Delivery,
    MailStatus,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)

LEFT_BEFORE_HAND_OFF = "not sent: the reader was no longer subscribed at hand-off time"
# How `last_error` starts when a delivery failed without a mailbox refusing it: the service's
# figures (service/stats.py) tell the reasons apart by these.
GAVE_UP = "gave up after the retry deadline"
UNBUILDABLE = "cannot build message"


@dataclass(frozen=True)
class Claim:
    """One claimed delivery: the reader to hand the column to."""

    id: int
    subscriber_id: int
    email: str
    name: str
    attempts: int
    due_at: dt.datetime | None = None  # when the reader was due: retries count from there
    zone: str | None = None  # the zone due_at was computed in
    contents: str | None = None  # a digest's columns, once chosen (digests.settle)


@dataclass(frozen=True)
class Refused:
    """A hand-off the relay refused for good because of the reader's mailbox (a 5xx at RCPT):
    the row fails, the reader is suppressed, and the refusal is kept as a bounce."""

    row_id: int
    subscriber_id: int
    email: str
    address_hash: str  # Tokens.address_hash(email): its entry on the suppression list
    reason: str  # the relay's reply
    status: str | None  # its RFC 3463 code


@dataclass
class Outcomes:
    """What a group of hand-offs came to; written together in one transaction."""

    sent: list[tuple[int, str | None]] = field(default_factory=list)  # id, relay (host:port)
    retry: list[tuple[int, dt.datetime, str]] = field(default_factory=list)  # id, when, why
    failed: list[tuple[int, str]] = field(default_factory=list)  # id, why: gave up
    bounced: list[Refused] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sent) + len(self.retry) + len(self.failed) + len(self.bounced)


def _claimable(send_id: int, now: dt.datetime):  # type: ignore[no-untyped-def]
    sending = exists().where(col(Send.id) == send_id, col(Send.status) == SendStatus.sending)
    return and_(col(Delivery.send_id) == send_id, due_or_abandoned(Delivery, now), sending)


def claimable(session: Session, *, send_id: int, now: dt.datetime, up_to: int) -> int:
    """How many rows of a send could be claimed now, counting no further than `up_to`."""
    due = select(Delivery.id).where(_claimable(send_id, now)).limit(up_to).subquery()
    return session.exec(select(func.count()).select_from(due)).one()


def _claimable_ids(session: Session, send_id: int, now: dt.datetime, limit: int) -> list[int]:
    """Up to `limit` rows to claim: those whose worker's lease ran out (few: what a crashed
    worker held), then the due ones, the longest waiting first. Each is read in the order of
    ix_deliveries_claim and stops at `limit`, never scanning past the rows already sent."""
    sending = exists().where(col(Send.id) == send_id, col(Send.status) == SendStatus.sending)

    def first(count: int, *where: ColumnElement[bool], order: tuple[Any, ...]) -> list[int]:
        query = (
            select(Delivery.id)
            .where(col(Delivery.send_id) == send_id, sending, *where)
            .order_by(*order)
            .limit(count)
            .with_for_update(skip_locked=True)
        )
        return [row_id for row_id in session.exec(query) if row_id is not None]

    ids = first(
        limit,
        col(Delivery.status) == MailStatus.sending,
        col(Delivery.lease_until) < now,
        order=(col(Delivery.id),),
    )
    if len(ids) < limit:
        ids += first(
            limit - len(ids),
            col(Delivery.status) == MailStatus.pending,
            col(Delivery.next_attempt_at) <= now,
            order=(col(Delivery.next_attempt_at), col(Delivery.id)),
        )
    return ids


def claim_batch(
    session: Session,
    *,
    send_id: int,
    worker: str,
    now: dt.datetime,
    limit: int,
    lease: dt.timedelta,
) -> list[Claim]:
    """Lease up to `limit` due rows of a send that is not paused to `worker`.

    Rows of readers who left since the snapshot (unsubscribed, bounced) are marked `skipped`
    instead (design rule: a reader who leaves mid-send gets nothing more). On PostgreSQL,
    FOR UPDATE SKIP LOCKED lets several workers claim from one send without waiting on or
    taking each other's rows; SQLite has one writer at a time (BEGIN IMMEDIATE)."""
    ids = _claimable_ids(session, send_id, now, limit)
    if not ids:
        return []
    # Correlated on the primary key: one look-up per claimed row, whatever the list's size.
    gone = exists().where(
        col(Subscriber.id) == col(Delivery.subscriber_id),
        col(Subscriber.status) != SubscriberStatus.active,
    )
    session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(ids), gone)
        .values(
            status=MailStatus.skipped,
            lease_until=None,
            claimed_by=None,
            last_error=LEFT_BEFORE_HAND_OFF,
        )
    )
    rows = session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(ids), col(Delivery.status) != MailStatus.skipped)
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
            col(Delivery.due_at),
            col(Delivery.zone),
            col(Delivery.contents),
        )
    ).all()
    return sorted((Claim(*row) for row in rows), key=lambda c: c.id)


def renew(session: Session, *, worker: str, until: dt.datetime) -> None:
    """Extend this worker's leases so that a slow send is not taken over while alive.

    Rows another transaction holds are passed over, never waited for: on PostgreSQL those are
    this worker's group commit marking them done (they need no longer lease), and the two
    statements lock the same rows in no common order, so a renewal that waited could
    deadlock with the commit (it did, 700,000 messages into a send of a million). A row
    passed over by a commit that then fails is renewed a third of a lease later."""
    held = (
        select(Delivery.id)
        .where(owned_by(Delivery, worker))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(held), owned_by(Delivery, worker))
        .values(lease_until=until)
    )


def release(session: Session, *, worker: str, ids: list[int], now: dt.datetime) -> None:
    """Give back claimed rows that were never handed to SMTP (a clean stop)."""
    if not ids:
        return
    session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(ids), owned_by(Delivery, worker))
        .values(
            status=MailStatus.pending,
            lease_until=None,
            claimed_by=None,
            next_attempt_at=now,
            attempts=col(Delivery.attempts) - 1,
        )
    )


def reclaim_own(session: Session, *, send_id: int, worker: str) -> int:
    """Free rows that an earlier run of this same worker left `sending` (it was aborted by a
    database error, say): no run of ours holds them now, so waiting for their lease to expire
    would only delay the send. A message among them may have reached the relay just before
    the abort, which is the same bound as a crash: at most one per connection."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.send_id) == send_id, owned_by(Delivery, worker))
        .values(status=MailStatus.pending, lease_until=None, claimed_by=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# The hot path writes through Core statements built once: the ORM's bulk-update bookkeeping
# and rebuilding statements per call tripled the ledger's cost.
_deliveries: Table = Delivery.__table__  # type: ignore[attr-defined]
_subscribers: Table = Subscriber.__table__  # type: ignore[attr-defined]
_bounces: Table = Bounce.__table__  # type: ignore[attr-defined]
_suppressions: Table = Suppression.__table__  # type: ignore[attr-defined]
_OWNED = owned_by(_deliveries.c, bindparam("worker"))
_SENT: dict[str, Any] = {  # what a sent mark writes
    "status": MailStatus.sent.value,
    "sent_at": bindparam("now"),
    "lease_until": None,
    "last_error": None,
    "relay": bindparam("relay"),
}
# One row per parameter set (executemany): a statement compiled once, where an expanding
# IN list is rendered anew for every group commit.
_MARK_SENT = (
    update(_deliveries).where(_deliveries.c.id == bindparam("row_id"), _OWNED).values(_SENT)
)
# A group all sent through one relay, the common case, as one statement: on PostgreSQL it
# runs in autocommit, its own transaction, in one round trip instead of an executemany and a
# COMMIT (`record_sent`).
_MARK_ALL_SENT = (
    update(_deliveries)
    .where(_deliveries.c.id == any_(bindparam("ids", type_=ARRAY(Integer))), _OWNED)
    .values(_SENT)
)
_MARK_RETRY = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("row_id"), _OWNED)
    .values(
        status=MailStatus.pending.value,
        lease_until=None,
        next_attempt_at=bindparam("when"),
        last_error=bindparam("why"),
    )
)
_MARK_FAILED = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("row_id"), _OWNED)
    .values(status=MailStatus.failed.value, lease_until=None, last_error=bindparam("why"))
)
# A refusal about the reader's mailbox marks the reader bounced: later sends skip them. Only
# when this worker's own failed mark above took effect (the row is still ours).
_SUPPRESS = (
    update(_subscribers)
    .where(
        _subscribers.c.id == bindparam("sub_id"),
        _subscribers.c.status == SubscriberStatus.active.value,
        exists().where(
            _deliveries.c.id == bindparam("row_id"),
            _deliveries.c.claimed_by == bindparam("worker"),
            _deliveries.c.status == MailStatus.failed.value,
        ),
    )
    .values(
        status=SubscriberStatus.bounced.value,
        bounced_at=bindparam("now"),
        updated_at=bindparam("now"),
        bounce_reason=bindparam("why"),
    )
)


def record(session: Session, outcomes: Outcomes, *, worker: str, now: dt.datetime) -> None:
    """Write a group of outcomes together (one statement per kind)."""
    gave_up = outcomes.failed + [(r.row_id, r.reason) for r in outcomes.bounced]
    conn = session.connection()
    if outcomes.sent:
        conn.execute(
            _MARK_SENT,
            [
                {"row_id": row_id, "now": now, "worker": worker, "relay": relay}
                for row_id, relay in outcomes.sent
            ],
        )
    if outcomes.retry:
        conn.execute(
            _MARK_RETRY,
            [
                {"row_id": i, "when": when, "why": why, "worker": worker}
                for i, when, why in outcomes.retry
            ],
        )
    if gave_up:
        conn.execute(
            _MARK_FAILED, [{"row_id": i, "why": why, "worker": worker} for i, why in gave_up]
        )
    if outcomes.bounced:
        _record_refusals(session, outcomes.bounced, worker=worker, now=now)


def sent_through_one_relay(outcomes: Outcomes) -> bool:
    """Whether `outcomes` are all sent marks, through one relay: `record_sent` can write them."""
    sent = outcomes.sent
    return len(outcomes) == len(sent) > 0 and all(relay == sent[0][1] for _id, relay in sent)


def record_sent(conn: Connection, outcomes: Outcomes, *, worker: str, now: dt.datetime) -> None:
    """`record` for a group that `sent_through_one_relay`, as one statement (PostgreSQL): on
    a connection in autocommit, durable when it returns."""
    ids = [row_id for row_id, _relay in outcomes.sent]
    relay = outcomes.sent[0][1]
    conn.execute(_MARK_ALL_SENT, {"ids": ids, "now": now, "worker": worker, "relay": relay})


def _record_refusals(
    session: Session, refused: list[Refused], *, worker: str, now: dt.datetime
) -> None:
    """For the rows this worker still owned (its failed mark took effect): the reader is
    marked bounced, the address goes on the suppression list, and the refusal is kept like
    any bounce that comes back later. A worker that lost its lease changes nobody."""
    conn = session.connection()
    ours = set(
        conn.execute(
            select(_deliveries.c.id).where(
                _deliveries.c.id.in_([r.row_id for r in refused]),
                _deliveries.c.claimed_by == worker,
                _deliveries.c.status == MailStatus.failed.value,
            )
        ).scalars()
    )
    refused = [r for r in refused if r.row_id in ours]
    if not refused:
        return
    conn.execute(
        _SUPPRESS,
        [
            {
                "sub_id": r.subscriber_id,
                "row_id": r.row_id,
                "why": r.reason[:1000],
                "now": now,
                "worker": worker,
            }
            for r in refused
        ],
    )
    insert_new(
        session,
        _suppressions,
        [
            {"address_hash": r.address_hash, "reason": SuppressionReason.bounced, "created_at": now}
            for r in refused
        ],
        key="address_hash",
    )
    conn.execute(
        _bounces.insert(),
        [
            {
                "received_at": now,
                "source": "at-send",
                "kind": BounceKind.hard,
                "email": r.email,
                "subscriber_id": r.subscriber_id,
                "delivery_id": r.row_id,
                "status": r.status,
                "diagnostic": r.reason[:1000],
                "raw_size": 0,
                "raw": None,
            }
            for r in refused
        ],
    )

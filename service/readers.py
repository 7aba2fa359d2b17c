"""The operator's view of the readership: find and page through readers, one reader's whole
history, and erasure (personal data removed, a keyed hash kept on the suppression list)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from .clock import utcnow
from .context import AppContext, Requester
from .delivery.timing import digest_title
from .models import (
    Bounce,
    Cadence,
    ColumnRecord,
    Consent,
    Delivery,
    Feedback,
    OutboxMail,
    RateBucket,
    Send,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
)
from .subscriptions import MAX_ID, mailbox_key, normalize_address, record_consent, suppress

# The reader's table and its values, for the entry points that show or take them.
__all__ = [
    "Cadence",
    "DeliveryLine",
    "History",
    "Subscriber",
    "SubscriberStatus",
    "erase",
    "find",
    "history",
]
ERASED_DOMAIN = "erased.invalid"  # RFC 2606: a name that can never receive mail
MAX_PAGE = 500


def find(
    session: Session,
    *,
    email: str | None = None,
    q: str | None = None,
    status: SubscriberStatus | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[Subscriber]:
    """Readers in id order after `after` (keyset pagination: as fast on page 20,000 as on
    page 1): the one at exactly `email` (normalised as stored), those whose address or name
    contains `q`, those in `status`."""
    if "\x00" in (email or "") + (q or ""):
        return []  # nothing stored holds a NUL, and PostgreSQL refuses one in a query
    query = select(Subscriber)
    if email is not None:
        query = query.where(col(Subscriber.email) == _as_stored(email))
    if q:
        pattern = (
            "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        query = query.where(
            col(Subscriber.email).like(pattern, escape="\\")
            | col(Subscriber.name).ilike(pattern, escape="\\")
        )
    if status is not None:
        query = query.where(col(Subscriber.status) == status)
    if after is not None:
        query = query.where(col(Subscriber.id) > after)
    return list(session.exec(query.order_by(col(Subscriber.id)).limit(min(limit, MAX_PAGE))))


def _as_stored(email: str) -> str:
    """An address as the table keeps it; one that is not valid cannot be there."""
    try:
        return normalize_address(email)
    except ValueError:
        return email.strip().lower()


@dataclass(frozen=True)
class DeliveryLine:
    """One column delivery to a reader, with its outcome."""

    send_id: int
    column_date: str
    column_title: str
    status: str
    attempts: int
    sent_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class History:
    """Everything we hold about one reader."""

    subscriber: Subscriber
    consents: list[Consent]
    deliveries: list[DeliveryLine]
    bounces: list[Bounce]
    feedback: list[Feedback]


def history(session: Session, subscriber_id: int, *, deliveries: int = 100) -> History | None:
    """One reader with their consent records, their latest deliveries and outcomes, their
    bounces and the feedback they sent; None for an unknown id."""
    subscriber = session.get(Subscriber, subscriber_id) if 0 < subscriber_id <= MAX_ID else None
    if subscriber is None:
        return None
    rows = session.exec(
        select(Delivery, Send, ColumnRecord)
        .join(Send, col(Send.id) == col(Delivery.send_id))
        .outerjoin(ColumnRecord, col(ColumnRecord.id) == col(Send.column_id))
        .where(col(Delivery.subscriber_id) == subscriber_id)
        .order_by(col(Delivery.id).desc())
        .limit(deliveries)
    ).all()
    return History(
        subscriber=subscriber,
        consents=_of(session, Consent, subscriber_id),
        deliveries=[
            DeliveryLine(
                send_id=d.send_id,
                column_date=c.date.isoformat() if c is not None else (s.week or ""),
                column_title=c.title if c is not None else digest_title(s.week or ""),
                status=d.status,
                attempts=d.attempts,
                sent_at=d.sent_at,
                last_error=d.last_error,
            )
            for d, s, c in rows
        ],
        bounces=_of(session, Bounce, subscriber_id),
        feedback=_of(session, Feedback, subscriber_id),
    )


Owned = TypeVar("Owned", Consent, Bounce, Feedback)


def _of(session: Session, table: type[Owned], subscriber_id: int) -> list[Owned]:
    return list(
        session.exec(
            select(table).where(col(table.subscriber_id) == subscriber_id).order_by(col(table.id))
        )
    )


def erase(
    session: Session,
    ctx: AppContext,
    subscriber_id: int,
    who: Requester,
    now: datetime | None = None,
) -> Subscriber:
    """Remove a reader's personal data everywhere we hold it (address, name, the addresses
    and names copied into the ledger and the bounces, the feedback they wrote, their IPs and
    user agents, mail still waiting for them) and keep only a keyed hash of the address on
    the suppression list, so nothing is ever mailed to it again unless its owner subscribes
    anew. The row stays, as `erased`, so counts and the consent trail (without personal
    data) add up. LookupError for an unknown id; erasing twice is fine."""
    now = now or utcnow()
    subscriber = session.get(Subscriber, subscriber_id) if 0 < subscriber_id <= MAX_ID else None
    if subscriber is None:
        raise LookupError(f"no subscriber {subscriber_id}")
    if subscriber.status == SubscriberStatus.erased:
        return subscriber
    address = subscriber.email
    suppress(session, ctx, address, SuppressionReason.erased)
    session.execute(delete(OutboxMail).where(col(OutboxMail.recipient) == address))
    session.execute(delete(RateBucket).where(col(RateBucket.key).like(f"%:{mailbox_key(address)}")))
    placeholder = f"erased-{subscriber_id}@{ERASED_DOMAIN}"
    session.execute(
        update(Delivery)
        .where(col(Delivery.subscriber_id) == subscriber_id)
        .values(email=placeholder, name="")
    )
    session.execute(
        update(Bounce)
        .where(col(Bounce.subscriber_id) == subscriber_id)
        .values(email=None, diagnostic=None, raw=None)
    )
    session.execute(
        update(Feedback)
        .where(col(Feedback.subscriber_id) == subscriber_id)
        .values(message="(erased)", reply_to=None, ip=None, user_agent=None)
    )
    session.execute(
        update(Consent)
        .where(col(Consent.subscriber_id) == subscriber_id)
        .values(ip=None, user_agent=None)
    )
    subscriber.email = placeholder
    subscriber.name = ""
    subscriber.pending_name = None
    subscriber.confirm_nonce = None
    subscriber.bounce_reason = None
    subscriber.status = SubscriberStatus.erased
    subscriber.updated_at = now
    session.add(subscriber)
    record_consent(session, subscriber, "erase", Requester(source=who.source), now)
    return subscriber

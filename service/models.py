"""The SQLModel tables. Data only: no I/O, no business rules."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from .clock import utcnow


class SubscriberStatus(StrEnum):
    """Where a reader stands: only `active` readers get the column."""

    pending = "pending"
    active = "active"
    unsubscribed = "unsubscribed"
    bounced = "bounced"  # a relay said the mailbox does not exist or cannot take mail
    complained = "complained"  # the reader marked our mail as spam (set by bounce processing)
    erased = "erased"  # personal data removed on request; the address is kept only as a hash


class MailStatus(StrEnum):
    """State of one outbox mail or one column delivery in the ledger."""

    pending = "pending"  # waiting for its next attempt (next_attempt_at)
    sending = "sending"  # claimed by a worker until lease_until
    sent = "sent"  # accepted by the SMTP server
    failed = "failed"  # permanent failure or retry deadline passed
    skipped = "skipped"  # the reader left (unsubscribed, bounced) before the hand-off


class SendKind(StrEnum):
    """What a send carries."""

    column = "column"  # one day's column to the daily readers
    digest = "digest"  # one ISO week's digest to the weekly readers


class SendStatus(StrEnum):
    """Where a send stands."""

    sending = "sending"
    paused = "paused"  # by the operator, or because the relay refused us; see pause_reason
    cancelled = "cancelled"  # by the operator: nobody not yet handed the column gets it
    done = "done"


class Cadence(StrEnum):
    """How often a reader wants the column."""

    daily = "daily"  # each day's column, at SEND_TIME in their zone (or the service's)
    weekly = "weekly"  # one digest of the week's columns, on their chosen weekday


class Subscriber(SQLModel, table=True):
    """A reader: their address, name, status, choices and when each change happened."""

    __tablename__ = "subscribers"
    __table_args__ = (
        # The admin list pages through one status in id order (keyset), at any size.
        Index("ix_subscribers_status_id", "status", "id"),
        # A send's snapshot takes the active readers of one cadence, one zone at a time.
        Index("ix_subscribers_status_cadence_zone", "status", "cadence", "timezone"),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)  # normalized, lower case
    name: str = Field(default="", max_length=100)
    # The name a subscribe request gave; it becomes `name` only once the address is confirmed,
    # so nobody can put words into a mail to somebody else's address.
    pending_name: str | None = Field(default=None, max_length=100)
    # Looked up through ix_subscribers_status_id (status first): an index of its own would
    # be one more written per imported reader.
    status: SubscriberStatus = Field(default=SubscriberStatus.pending, sa_type=String(16))
    confirm_nonce: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    confirmed_at: datetime | None = Field(default=None, sa_type=DateTime())
    unsubscribed_at: datetime | None = Field(default=None, sa_type=DateTime())
    bounced_at: datetime | None = Field(default=None, sa_type=DateTime())
    bounce_reason: str | None = Field(default=None, max_length=1000)
    last_notice_at: datetime | None = Field(default=None, sa_type=DateTime())
    # The reader's IANA time zone (validated against zoneinfo); None: the service's TIMEZONE.
    timezone: str | None = Field(default=None, max_length=64)
    cadence: Cadence = Field(default=Cadence.daily, sa_type=String(16))
    digest_weekday: int = 7  # ISO weekday of a weekly reader's digest: 1 Monday … 7 Sunday


class Consent(SQLModel, table=True):
    """Proof of each consent decision: who, when, from where, through which door."""

    __tablename__ = "consents"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscribers.id", index=True)
    action: str = Field(max_length=32)  # subscribe, confirm, unsubscribe, one-click, bounce
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    # web, api, smtp, imap…, or an import's consent source ("list moved from X, 2026-11")
    source: str = Field(default="web", max_length=200)


class LeasedWork(SQLModel):
    """The columns of work that workers claim with a lease and retry (mail/leases.py): the
    outbox's mails and the ledger's deliveries alike."""

    status: MailStatus = Field(default=MailStatus.pending, sa_type=String(16))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    lease_until: datetime | None = Field(default=None, sa_type=DateTime())
    claimed_by: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, max_length=1000)
    sent_at: datetime | None = Field(default=None, sa_type=DateTime())


class OutboxMail(LeasedWork, table=True):
    """A transactional mail written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    recipient: str = Field(max_length=320)
    envelope_from: str = Field(max_length=320)
    message: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())


class Feedback(SQLModel, table=True):
    """What a reader told us through the "having issues?" form."""

    __tablename__ = "feedback"

    id: int | None = Field(default=None, primary_key=True)
    category: str = Field(max_length=32)
    message: str = Field(sa_column=Column(Text, nullable=False))
    reply_to: str | None = Field(default=None, max_length=320)
    subscriber_id: int | None = Field(default=None, foreign_key="subscribers.id")
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    resolved_at: datetime | None = Field(default=None, sa_type=DateTime())


class RateBucket(SQLModel, table=True):
    """A token bucket per key (a reader's action, a send's DELIVERY_RATE, a relay's hourly
    cap), shared by every process through the database: `tokens` left as of `updated_at`."""

    __tablename__ = "rate_buckets"

    key: str = Field(primary_key=True, max_length=400)
    tokens: float
    granted: int = 0  # what the last take got: RETURNING cannot show the row's old tokens
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())


class ColumnRecord(SQLModel, table=True):
    """A stored World View column: one per date, structured for rendering."""

    __tablename__ = "columns"

    id: int | None = Field(default=None, primary_key=True)
    date: dt.date = Field(unique=True)
    slug: str = Field(max_length=200, unique=True)
    title: str = Field(max_length=500)
    byline: str = Field(default="", max_length=500)
    headlines: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    sections: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    permalink: str | None = Field(default=None, max_length=1000)
    source_text: str = Field(sa_column=Column(Text, nullable=False))
    source_format: str = Field(max_length=16)  # worldview, markdown
    source_name: str = Field(default="", max_length=500)
    content_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    # Set by the operator before the send starts: go out at this moment (UTC) instead of at
    # SEND_TIME on its date, or not at all.
    send_at: datetime | None = Field(default=None, sa_type=DateTime())
    cancelled_at: datetime | None = Field(default=None, sa_type=DateTime())


class Send(SQLModel, table=True):
    """One column (or one week's digest) going out; unique per column and per ISO week, so
    nothing can start it twice."""

    __tablename__ = "sends"
    # Every serve/worker process asks which sends are going out every SEND_POLL_SECONDS.
    __table_args__ = (Index("ix_sends_status", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: SendKind = Field(default=SendKind.column, sa_type=String(16))
    column_id: int | None = Field(default=None, foreign_key="columns.id", unique=True)
    week: str | None = Field(default=None, max_length=10, unique=True)  # a digest's, "2026-W48"
    status: SendStatus = Field(default=SendStatus.sending, sa_type=String(16))
    total: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    # The last time an operator resumed a paused send: the retry deadline counts from here.
    resumed_at: datetime | None = Field(default=None, sa_type=DateTime())
    paused_at: datetime | None = Field(default=None, sa_type=DateTime())
    pause_reason: str | None = Field(default=None, max_length=1000)
    finished_at: datetime | None = Field(default=None, sa_type=DateTime())
    cancelled_at: datetime | None = Field(default=None, sa_type=DateTime())


class Delivery(LeasedWork, table=True):
    """The ledger: one row per (send, subscriber), durable before and after each hand-off."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("send_id", "subscriber_id", name="uq_deliveries_send_subscriber"),
        # The claim reads a send's due rows in this order and stops at its batch: never a
        # scan past the rows already sent (that made each claim O(N), a send O(N²)).
        Index("ix_deliveries_claim", "send_id", "status", "next_attempt_at", "id"),
        # A send's rate over the last minute, the figures per day. Partial: the snapshot
        # writes a million rows whose sent_at is NULL without touching it.
        Index(
            "ix_deliveries_sent_at",
            "send_id",
            "sent_at",
            postgresql_where=text("sent_at IS NOT NULL"),
            sqlite_where=text("sent_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    send_id: int = Field(foreign_key="sends.id")
    # The reader's id, without a foreign key: checking one locked and rewrote every reader's
    # row while a send's snapshot wrote its million rows (~40 % of its time on PostgreSQL),
    # and it guards nothing here: readers are never deleted (an erased one keeps its row).
    subscriber_id: int = Field(index=True)
    email: str = Field(max_length=320)
    name: str = Field(default="", max_length=100)
    relay: str | None = Field(default=None, max_length=255)  # host:port that took it
    # When the reader is to get it (SEND_TIME on the column's date in their zone, or the
    # send's start); next_attempt_at is never earlier, so workers claim only due rows.
    due_at: datetime | None = Field(default=None, sa_type=DateTime())
    zone: str | None = Field(default=None, max_length=64)  # the zone due_at was computed in
    # A digest's columns (their ids, comma-separated), fixed at its first claim so that a
    # retry sends the same digest; "" when there was nothing new to send.
    contents: str | None = Field(default=None, max_length=200)


class BounceKind(StrEnum):
    """What a report from a receiving system says about a reader, and so what it changes."""

    hard = "hard"  # the mailbox does not exist or cannot take mail: suppressed at once
    soft = "soft"  # full, deferred, delayed: counts towards SOFT_BOUNCE_LIMIT
    policy = "policy"  # the receiver refused our message (5.7.x, content): the operator's
    complaint = "complaint"  # "this is spam" (ARF, a webhook): suppressed at once
    unsubscribe = "unsubscribe"  # a mail to List-Unsubscribe's mailto: address
    auto_reply = "auto-reply"  # out of office and the like: not a bounce, changes nothing
    unknown = "unknown"  # not attributable or not understood: kept, raw, for the operator


class Bounce(SQLModel, table=True):
    """Every report that came back about our mail, with what it was about."""

    __tablename__ = "bounces"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(), index=True)
    source: str = Field(max_length=16)  # at-send, smtp, imap, ses, postmark
    kind: BounceKind = Field(sa_type=String(16))
    email: str | None = Field(default=None, max_length=320)
    subscriber_id: int | None = Field(default=None, foreign_key="subscribers.id", index=True)
    delivery_id: int | None = Field(default=None, sa_type=BigInteger())
    status: str | None = Field(default=None, max_length=16)  # RFC 3463, e.g. 5.1.1
    diagnostic: str | None = Field(default=None, max_length=1000)
    raw_size: int = 0
    # The sender's own id of the report (a DSN's Message-ID, SNS's MessageId, Postmark's ID)
    # with the recipient's place in it: reports arrive at least once, and a repeat must not
    # count again towards the soft-bounce limit.
    report_id: str | None = Field(default=None, max_length=300, unique=True)
    # The whole report, kept when nothing could be attributed: for the operator to read.
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class SuppressionReason(StrEnum):
    """Why an address is on the suppression list."""

    unsubscribed = "unsubscribed"
    bounced = "bounced"
    complained = "complained"
    erased = "erased"


class Suppression(SQLModel, table=True):
    """The one suppression list: addresses never mailed again until their owner confirms a
    new subscription. Only a keyed hash of the address is kept (Tokens.address_hash), so the
    list can say "this one" of an erased reader's address but cannot be read back."""

    __tablename__ = "suppressions"

    id: int | None = Field(default=None, primary_key=True)
    address_hash: str = Field(max_length=64, unique=True)
    reason: SuppressionReason = Field(sa_type=String(16))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())


class AdminSession(SQLModel, table=True):
    """A signed-in dashboard session: the cookie holds a random token, this table only its
    hash, so signing out (or a stolen database) ends it for good."""

    __tablename__ = "admin_sessions"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime())
    expires_at: datetime = Field(sa_type=DateTime())
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)

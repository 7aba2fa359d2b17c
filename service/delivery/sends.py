"""Start a send (unique per column) and snapshot its recipients; pause, resume, count it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, insert, literal, update
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from ..clock import utcnow
from ..errors import DomainError
from ..models import (
    ColumnRecord,
    Delivery,
    MailStatus,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
)


@dataclass(frozen=True)
class SendCounts:
    """A send's deliveries by state."""

    total: int
    sent: int
    failed: int
    pending: int  # waiting, deferred for a retry, or being handed over right now
    skipped: int = 0  # the reader left between the snapshot and the hand-off

    @property
    def done(self) -> bool:
        """No delivery is left to try."""
        return self.pending == 0


class SendPaused(DomainError):
    """The relay refused mail for reasons of its own; the send waits for the operator."""

    def __init__(self, send_id: int, reason: str) -> None:
        super().__init__(f"send {send_id} is paused: {reason}")
        self.send_id = send_id
        self.reason = reason


def for_column(session: Session, column_id: int) -> Send | None:
    """The send of a column, if it was started."""
    return session.exec(select(Send).where(Send.column_id == column_id)).first()


def active_readers(session: Session) -> int:
    """How many readers a send started now would snapshot."""
    return session.exec(
        select(func.count()).where(col(Subscriber.status) == SubscriberStatus.active)
    ).one()


def reader_by_address(session: Session, address: str) -> tuple[int, str] | None:
    """The id and name of the reader at `address` (any status), for a preview's links."""
    row = session.exec(
        select(Subscriber.id, Subscriber.name).where(Subscriber.email == address.lower())
    ).first()
    return (row[0] or 0, row[1]) if row is not None else None


def start(
    session: Session, *, column: ColumnRecord, now: dt.datetime | None = None
) -> tuple[Send, bool]:
    """The send of `column`, created if it did not exist (then True). Creating it snapshots
    every subscriber active at this moment into the ledger, set-based, in the same
    transaction: later subscribers wait for the next column. Two schedulers racing here
    make one send; the loser gets the winner's."""
    now = now or utcnow()
    assert column.id is not None
    dialect = session.get_bind().dialect.name
    insert_send = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Send)
    created_id = session.execute(
        insert_send.values(column_id=column.id, status=SendStatus.sending, total=0, created_at=now)
        .on_conflict_do_nothing(index_elements=["column_id"])
        .returning(col(Send.id))
    ).scalar()
    if created_id is not None:
        _snapshot(session, created_id, now)
    send = session.exec(select(Send).where(Send.column_id == column.id)).one()
    session.refresh(send)
    return send, created_id is not None


def _snapshot(session: Session, send_id: int, now: dt.datetime) -> None:
    active = sql_select(
        literal(send_id),
        col(Subscriber.id),
        col(Subscriber.email),
        col(Subscriber.name),
        literal(MailStatus.pending.value),
        literal(0),
        literal(now),
    ).where(col(Subscriber.status) == SubscriberStatus.active)
    columns = ["send_id", "subscriber_id", "email", "name", "status", "attempts", "next_attempt_at"]
    session.execute(insert(Delivery).from_select(columns, active))
    total = session.exec(select(func.count()).where(col(Delivery.send_id) == send_id)).one()
    session.execute(update(Send).where(col(Send.id) == send_id).values(total=total))


def counts(session: Session, send_id: int) -> SendCounts:
    """A send's deliveries counted by state."""
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.send_id == send_id)
        .group_by(Delivery.status)
    ).all()
    by_status = {status: number for status, number in rows}
    sent, failed = by_status.get(MailStatus.sent, 0), by_status.get(MailStatus.failed, 0)
    skipped = by_status.get(MailStatus.skipped, 0)
    pending = by_status.get(MailStatus.pending, 0) + by_status.get(MailStatus.sending, 0)
    return SendCounts(
        total=sent + failed + pending + skipped,
        sent=sent,
        failed=failed,
        pending=pending,
        skipped=skipped,
    )


def finish_if_done(session: Session, send_id: int, now: dt.datetime | None = None) -> bool:
    """Mark the send done once no delivery is left to try; True if it is done."""
    if not counts(session, send_id).done:
        return False
    session.execute(
        update(Send)
        .where(col(Send.id) == send_id, col(Send.status) == SendStatus.sending)
        .values(status=SendStatus.done, finished_at=now or utcnow())
    )
    return True


def unfinished(session: Session) -> list[Send]:
    """Sends still going out (paused ones wait for the operator and are not listed)."""
    return list(
        session.exec(select(Send).where(Send.status == SendStatus.sending).order_by(col(Send.id)))
    )


def pause(session: Session, send_id: int, reason: str, now: dt.datetime | None = None) -> bool:
    """Stop a send from going out until `resume`; True if this call paused it."""
    result = session.execute(
        update(Send)
        .where(col(Send.id) == send_id, col(Send.status) == SendStatus.sending)
        .values(status=SendStatus.paused, paused_at=now or utcnow(), pause_reason=reason[:1000])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def resume(session: Session, send_id: int, now: dt.datetime | None = None) -> bool:
    """Let a paused send go out again, at once: the rows it deferred are due now, and the
    retry deadline counts from this moment. True if it was paused."""
    now = now or utcnow()
    result = session.execute(
        update(Send)
        .where(col(Send.id) == send_id, col(Send.status) == SendStatus.paused)
        .values(status=SendStatus.sending, resumed_at=now, paused_at=None, pause_reason=None)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    session.execute(
        update(Delivery)
        .where(col(Delivery.send_id) == send_id, col(Delivery.status) == MailStatus.pending)
        .values(next_attempt_at=now)
    )
    return True


def retry_deadline(send: Send, allowed: dt.timedelta) -> dt.datetime:
    """Transient failures are retried until this moment (from the start or the last resume)."""
    return (send.resumed_at or send.created_at) + allowed


@dataclass(frozen=True)
class SendSummary:
    """One send as an operator sees it: which column, where it stands, and why if paused."""

    id: int
    date: dt.date
    title: str
    status: str
    readers: int
    counts: SendCounts
    started_at: dt.datetime
    paused_at: dt.datetime | None
    pause_reason: str | None
    finished_at: dt.datetime | None


def latest(session: Session, limit: int = 10) -> list[SendSummary]:
    """The newest sends first, with their counts."""
    rows = session.exec(
        select(Send, ColumnRecord)
        .join(ColumnRecord, col(ColumnRecord.id) == col(Send.column_id))
        .order_by(col(Send.id).desc())
        .limit(limit)
    ).all()
    return [
        SendSummary(
            id=send.id or 0,
            date=column.date,
            title=column.title,
            status=send.status,
            readers=send.total,
            counts=counts(session, send.id or 0),
            started_at=send.created_at,
            paused_at=send.paused_at,
            pause_reason=send.pause_reason,
            finished_at=send.finished_at,
        )
        for send, column in rows
    ]

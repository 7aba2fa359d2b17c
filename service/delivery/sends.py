"""Start a send (unique per column) and snapshot its recipients; read its counts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, insert, literal, update
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from ..clock import utcnow
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
    total: int
    sent: int
    failed: int
    pending: int  # waiting, deferred for a retry, or being handed over right now

    @property
    def done(self) -> bool:
        return self.pending == 0


def column_for(session: Session, day: dt.date) -> ColumnRecord | None:
    return session.exec(select(ColumnRecord).where(ColumnRecord.date == day)).first()


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
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.send_id == send_id)
        .group_by(Delivery.status)
    ).all()
    by_status = {status: number for status, number in rows}
    sent, failed = by_status.get(MailStatus.sent, 0), by_status.get(MailStatus.failed, 0)
    pending = by_status.get(MailStatus.pending, 0) + by_status.get(MailStatus.sending, 0)
    return SendCounts(total=sent + failed + pending, sent=sent, failed=failed, pending=pending)


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
    return list(
        session.exec(select(Send).where(Send.status == SendStatus.sending).order_by(col(Send.id)))
    )


def latest(session: Session, limit: int = 10) -> list[tuple[Send, ColumnRecord, SendCounts]]:
    rows = session.exec(
        select(Send, ColumnRecord)
        .join(ColumnRecord, col(ColumnRecord.id) == col(Send.column_id))
        .order_by(col(Send.id).desc())
        .limit(limit)
    ).all()
    return [(send, column, counts(session, send.id or 0)) for send, column in rows]

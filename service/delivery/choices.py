"""A reader changed their time zone, cadence or digest weekday: move what is waiting for
them to the new time, and put a new weekly reader in this week's digest."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, update
from sqlmodel import Session, col, select

from ..config import Settings
from ..models import (
    Cadence,
    ColumnRecord,
    Delivery,
    MailStatus,
    Send,
    SendKind,
    SendStatus,
    Subscriber,
)
from . import digests, timing


def reader_changed(
    session: Session, settings: Settings, subscriber: Subscriber, now: dt.datetime
) -> int:
    """Re-time the reader's rows that are not yet due (call after the change is flushed, in
    its transaction); returns how many moved. A row due later moves to SEND_TIME in the new
    zone, on the new weekday (at once when that has passed already); a row already due or
    handed over is left alone, so nothing comes twice. A reader who turned weekly keeps the
    daily columns already waiting for them (their digest leaves those out) and joins this
    week's digest; one who turned daily gets their waiting digest at once, with the columns
    they were not mailed, and the daily column from the next send on."""
    now = now.astimezone(dt.UTC).replace(tzinfo=None) if now.tzinfo else now
    moved = sum(
        _retime(session, settings, subscriber, row, now)
        for row in _waiting(session, subscriber, now)
    )
    if subscriber.cadence == Cadence.weekly:
        digests.join_week(session, settings, subscriber, now)
    return moved


def _waiting(
    session: Session, subscriber: Subscriber, now: dt.datetime
) -> list[tuple[int, str, str | None, dt.date | None]]:
    """The reader's rows not yet due: id, send kind, digest week, column date."""
    waiting = and_(
        col(Delivery.subscriber_id) == subscriber.id,
        col(Delivery.status) == MailStatus.pending,
        col(Delivery.attempts) == 0,
        col(Delivery.due_at) > now,
        col(Send.status).in_([SendStatus.sending, SendStatus.paused]),
    )
    rows = session.exec(
        select(col(Delivery.id), col(Send.kind), col(Send.week), col(ColumnRecord.date))
        .join(Send, col(Send.id) == col(Delivery.send_id))
        .outerjoin(ColumnRecord, col(ColumnRecord.id) == col(Send.column_id))
        .where(waiting)
    ).all()
    return [(row_id or 0, kind, week, day) for row_id, kind, week, day in rows]


def _retime(
    session: Session,
    settings: Settings,
    subscriber: Subscriber,
    row: tuple[int, str, str | None, dt.date | None],
    now: dt.datetime,
) -> int:
    row_id, kind, week, day = row
    zone = timing.zone_of(settings, subscriber.timezone)
    if kind == SendKind.digest and subscriber.cadence == Cadence.daily:
        due = now  # the last digest, now: what they were not mailed before turning daily
    elif kind == SendKind.digest and week is not None:
        due, zone = timing.digest_due(settings, week)(
            subscriber.timezone, subscriber.digest_weekday
        )
    elif day is not None:
        due, zone = timing.due_at(settings, day, subscriber.timezone)
    else:
        return 0
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.id) == row_id, col(Delivery.status) == MailStatus.pending)
        .values(due_at=due, zone=zone, next_attempt_at=max(due, now))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]

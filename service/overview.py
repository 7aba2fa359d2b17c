"""The operator's overview in numbers: readers by status, 90 days of growth and of mail
sent, and when the next column goes out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from .columns import store
from .config import Settings
from .delivery import daily, sends
from .models import ColumnRecord, Delivery, Send, Subscriber, SubscriberStatus

DAYS = 90  # the charts' span
# Readers who once received the column and stopped: what counts as "left" on the chart.
LEFT = (
    SubscriberStatus.unsubscribed,
    SubscriberStatus.bounced,
    SubscriberStatus.complained,
    SubscriberStatus.erased,
)
UPCOMING = 5  # operator-scheduled columns listed beside the next daily send


@dataclass(frozen=True)
class Growth:
    """Per day (UTC) over the span: readers who confirmed, who left, and how many were
    active at the day's end (worked back from today's count, so it is exact today and as
    exact as the recorded times before)."""

    days: list[dt.date]
    joined: list[int]
    left: list[int]
    active: list[int]


@dataclass(frozen=True)
class NextSend:
    """A moment a column goes out: SEND_TIME on a day, or a time the operator chose."""

    at: dt.datetime  # aware, in TIMEZONE
    column_id: int | None
    title: str | None  # None: no column for that day yet (sources are read at that moment)
    scheduled: bool  # the operator's time, not SEND_TIME


def span(today: dt.date, days: int = DAYS) -> list[dt.date]:
    """The last `days` days, oldest first, ending with `today`."""
    return [today - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]


def readers_by_status(session: Session) -> dict[str, int]:
    """How many readers are in each status (every status listed, 0 included)."""
    rows = session.execute(
        select(Subscriber.status, func.count()).group_by(col(Subscriber.status))
    ).all()
    counted = {str(status): number for status, number in rows}
    return {status.value: counted.get(status.value, 0) for status in SubscriberStatus}


def growth(session: Session, today: dt.date, days: int = DAYS) -> Growth:
    """Confirmations and departures per day over the span, and the active readers each day."""
    dates = span(today, days)
    since = dt.datetime.combine(dates[0], dt.time())
    confirmed = col(Subscriber.confirmed_at)
    joined = _per_day(session, confirmed, confirmed >= since)
    left_at = func.coalesce(
        col(Subscriber.unsubscribed_at), col(Subscriber.bounced_at), col(Subscriber.updated_at)
    )
    left = _per_day(
        session,
        left_at,
        col(Subscriber.status).in_(LEFT),
        confirmed.is_not(None),
        left_at >= since,
    )
    active = session.exec(
        select(func.count()).where(col(Subscriber.status) == SubscriberStatus.active)
    ).one()
    at_end: list[int] = []
    for day in reversed(dates):
        at_end.append(max(active, 0))
        active += left.get(day, 0) - joined.get(day, 0)
    return Growth(
        days=dates,
        joined=[joined.get(day, 0) for day in dates],
        left=[left.get(day, 0) for day in dates],
        active=list(reversed(at_end)),
    )


def sent_per_day(session: Session, today: dt.date, days: int = DAYS) -> list[int]:
    """Column mails handed to the relay on each day (UTC) of the span."""
    dates = span(today, days)
    since = dt.datetime.combine(dates[0], dt.time())
    # Only sends that can have rows in the span: the (send_id, sent_at) index does the rest.
    recent = select(Send.id).where(col(Send.created_at) >= since - dt.timedelta(days=2))
    sent_at = col(Delivery.sent_at)
    counted = _per_day(session, sent_at, col(Delivery.send_id).in_(recent), sent_at >= since)
    return [counted.get(day, 0) for day in dates]


def _per_day(session: Session, moment: Any, *conditions: Any) -> dict[dt.date, int]:
    """Rows matching `conditions` counted by the UTC day of `moment`."""
    day = func.date(moment)
    rows = session.execute(select(day, func.count()).where(*conditions).group_by(day)).all()
    return {_as_date(value): number for value, number in rows if value is not None}


def _as_date(value: dt.date | str) -> dt.date:
    """date() gives a date on PostgreSQL and 'YYYY-MM-DD' on SQLite."""
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def latest_send(session: Session) -> sends.SendSummary | None:
    """The newest send with its counts, if any send was ever made."""
    found = sends.latest(session, 1)
    return found[0] if found else None


def next_sends(session: Session, settings: Settings, now: dt.datetime) -> list[NextSend]:
    """The next daily send (SEND_TIME in TIMEZONE) and the columns scheduled for a time of
    the operator's choosing that have not started, soonest first. A scheduled time already
    past is due: the next heal (RESUME_INTERVAL) starts it."""
    upcoming = [_next_daily(session, settings, now)]
    waiting = session.exec(
        select(ColumnRecord)
        .where(
            col(ColumnRecord.send_at).is_not(None),
            col(ColumnRecord.cancelled_at).is_(None),
            ~select(Send.id).where(col(Send.column_id) == col(ColumnRecord.id)).exists(),
        )
        .order_by(col(ColumnRecord.send_at))
        .limit(UPCOMING)
    )
    for column in waiting:
        assert column.send_at is not None
        at = column.send_at.replace(tzinfo=dt.UTC).astimezone(settings.tz)
        upcoming.append(NextSend(at, column.id, column.title, scheduled=True))
    return sorted(upcoming, key=lambda item: item.at)


def _next_daily(session: Session, settings: Settings, now: dt.datetime) -> NextSend:
    day = daily.local_day(settings, now)
    if daily.send_moment(settings, day) <= now:
        day += dt.timedelta(days=1)
    column = store.column_for(session, day)
    goes = (
        column is not None
        and column.cancelled_at is None
        and column.send_at is None
        and sends.for_column(session, column.id or 0) is None
    )
    if not goes or column is None:
        return NextSend(daily.send_moment(settings, day), None, None, scheduled=False)
    return NextSend(daily.send_moment(settings, day), column.id, column.title, scheduled=False)

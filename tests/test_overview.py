"""The overview's numbers: readers who joined and left by day and the active count worked
back from today's, mail sent by day, and when the next columns go out."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service import overview
from service.clock import utcnow
from service.columns import sources
from service.config import Settings
from service.db import transaction
from service.models import ColumnRecord, Subscriber, SubscriberStatus
from tests.daily import add_readers, run_job

TEXT = "---\ntitle: {title}\n---\n\nA short column.\n"


def add(engine: Engine, email: str, status: SubscriberStatus, **times: dt.datetime) -> None:
    with transaction(engine) as session:
        session.add(Subscriber(email=email, status=status, **times))


def test_growth_counts_joins_and_departures_by_day_and_works_back_the_active_count(
    engine: Engine,
) -> None:
    now = utcnow()

    def ago(days: int) -> dt.datetime:
        return now - dt.timedelta(days=days)

    add(engine, "a@example.org", SubscriberStatus.active, confirmed_at=ago(10))
    add(
        engine,
        "b@example.org",
        SubscriberStatus.unsubscribed,
        confirmed_at=ago(5),
        unsubscribed_at=ago(2),
    )
    add(engine, "c@example.org", SubscriberStatus.active, confirmed_at=now)
    add(engine, "d@example.org", SubscriberStatus.pending)  # never confirmed: not counted
    with Session(engine) as session:
        grown = overview.growth(session, now.date())
        by_status = overview.readers_by_status(session)
    assert len(grown.days) == overview.DAYS and grown.days[-1] == now.date()
    assert (sum(grown.joined), sum(grown.left)) == (3, 1)
    assert (grown.joined[-1], grown.joined[-6], grown.left[-3]) == (1, 1, 1)
    # Active at the end of: today, yesterday, 2 days ago (b left), 3 days ago, 6 and 11 ago.
    active = grown.active
    assert [active[-1], active[-2], active[-3], active[-4], active[-7], active[-12]] == [
        2,
        1,
        1,
        2,
        1,
        0,
    ]
    assert by_status["active"] == 2 and by_status["pending"] == 1 and by_status["erased"] == 0


def test_mail_sent_is_counted_on_the_day_it_went_out(engine: Engine, settings: Settings) -> None:
    add_readers(engine, active=3, pending=2)
    run_job(engine, settings)
    with Session(engine) as session:
        sent = overview.sent_per_day(session, utcnow().date())
    assert sent[-1] == 3 and sum(sent) == 3


def test_the_next_sends_are_the_daily_one_and_the_operators_soonest_first(
    engine: Engine, settings: Settings
) -> None:
    settings = settings.model_copy(update={"delivery_timing": "fixed"})
    now = dt.datetime(2030, 3, 10, 12, 0, tzinfo=dt.UTC)  # after SEND_TIME (06:00 UTC)
    with transaction(engine) as session:
        daily = sources.import_text(
            session, TEXT.format(title="Daily"), fmt="markdown", date=now.date(), name="t"
        )
        tomorrow = sources.import_text(
            session,
            TEXT.format(title="Tomorrow"),
            fmt="markdown",
            date=now.date() + dt.timedelta(days=1),
            name="t",
        )
        for title, days, cancelled in (("Soon", 0, False), ("Later", 3, False), ("No", 1, True)):
            stored = sources.import_text(
                session,
                TEXT.format(title=title),
                fmt="markdown",
                date=now.date() + dt.timedelta(days=10 + days),
                name="t",
            )
            column = session.get(ColumnRecord, stored.column_id)
            assert column is not None
            column.send_at = (now + dt.timedelta(days=days, hours=1)).replace(tzinfo=None)
            column.cancelled_at = utcnow() if cancelled else None
    with Session(engine) as session:
        upcoming = overview.next_sends(session, settings, now)
    assert [(n.title, n.scheduled) for n in upcoming] == [
        ("Soon", True),
        ("Tomorrow", False),
        ("Later", True),
    ]
    assert upcoming[1].column_id == tomorrow.column_id != daily.column_id
    assert upcoming[1].at == dt.datetime(2030, 3, 11, 6, 0, tzinfo=settings.tz)

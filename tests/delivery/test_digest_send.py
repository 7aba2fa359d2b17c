"""The weekly digest: a weekly reader gets one digest on their weekday at 06:00 their time,
with the week's columns they were not mailed; switching cadence either way mid-week loses no
column and repeats none; a week without columns sends nothing. The clock is the test's."""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.columns import sources
from service.config import Settings
from service.db import transaction
from service.delivery import choices, digests, ledger, timing
from service.delivery.daily import Dispatcher
from service.models import Cadence, Delivery, Send, Subscriber, SubscriberStatus
from tests.conftest import Clock
from tests.daily import dispatcher
from tests.helpers import body
from tests.smtp_server import Received, SmtpTestServer

MONDAY = dt.date(2026, 11, 23)  # ISO week 2026-W48
BERLIN = "Europe/Berlin"
TEXT = "---\ntitle: {title}\n---\n\nThe opening paragraph of {title}.\n"


def title(day: dt.date) -> str:
    return f"Column of {day:%A}"


def add_columns(engine: Engine, days: list[dt.date]) -> None:
    with transaction(engine) as session:
        for day in days:
            sources.import_text(
                session, TEXT.format(title=title(day)), fmt="markdown", date=day, name="t"
            )


def weekdays(count: int) -> list[dt.date]:
    return [MONDAY + dt.timedelta(days=i) for i in range(count)]


def add_reader(engine: Engine, address: str, cadence: Cadence, weekday: int = 5) -> None:
    with transaction(engine) as session:
        session.add(
            Subscriber(
                email=address,
                status=SubscriberStatus.active,
                timezone=BERLIN,
                cadence=cadence,
                digest_weekday=weekday,
            )
        )


def berlin(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ZoneInfo(BERLIN))


def change(
    engine: Engine, settings: Settings, address: str, clock: Clock, **choice: object
) -> None:
    """What the preferences page does: save the choice, re-time what waits, one transaction."""
    with transaction(engine) as session:
        reader = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
        for key, value in choice.items():
            setattr(reader, key, value)
        session.flush()
        choices.reader_changed(session, settings, reader, clock.now())


async def live_until(runs: Dispatcher, clock: Clock, until: dt.datetime) -> None:
    """The process's heal every three hours of the test's clock up to `until`, and at each
    06:00 in Berlin (when the readers here are due)."""
    start = clock.now()
    moments = {until} | {
        start + dt.timedelta(hours=3 * step)
        for step in range(int((until - start).total_seconds() // 10800) + 1)
    }
    day = start.astimezone(ZoneInfo(BERLIN)).date()
    while berlin(day, 6) <= until:
        moments.add(berlin(day, 6).astimezone(dt.UTC))
        day += dt.timedelta(days=1)
    for moment in sorted(m for m in moments if start < m <= until):
        clock.advance((moment - clock.now()).total_seconds())
        await runs.heal(clock.now())
        await runs.wait(None)


def mails_to(server: SmtpTestServer, address: str) -> list[Received]:
    return [mail for mail in server.received if address in mail.rcpt_tos]


def digest_titles(mail: Received) -> list[str]:
    text = body(mail, "plain")
    return [title(day) for day in weekdays(7) if title(day) in text]


def is_digest(mail: Received) -> bool:
    return str(mail.message["Message-ID"]).startswith("<digest.")


def run(engine: Engine, settings: Settings, start: dt.datetime, steps) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(start.astimezone(dt.UTC))

    async def scenario() -> None:
        runs = dispatcher(engine, settings, clock.now)
        await steps(runs, clock)

    asyncio.run(scenario())


def test_a_weekly_reader_gets_the_weeks_five_columns_in_one_digest_on_their_weekday(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, weekdays(5))
    add_reader(engine, "weekly@example.com", Cadence.weekly, weekday=5)  # Friday
    add_reader(engine, "daily@example.com", Cadence.daily)

    async def steps(runs: Dispatcher, clock: Clock) -> None:
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=4), 5, 59))
        assert mails_to(smtp_server, "weekly@example.com") == []
        assert len(mails_to(smtp_server, "daily@example.com")) == 4  # Monday to Thursday
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=6), 23))

    run(engine, settings, timing.opens(settings, MONDAY) - dt.timedelta(minutes=1), steps)
    [digest] = mails_to(smtp_server, "weekly@example.com")
    assert is_digest(digest)
    assert digest_titles(digest) == [title(day) for day in weekdays(5)]
    assert "The opening paragraph of Column of Wednesday." in body(digest, "plain")
    assert "/preferences/" in body(digest, "plain")
    daily = mails_to(smtp_server, "daily@example.com")
    assert len(daily) == 5 and not any(is_digest(mail) for mail in daily)
    with Session(engine) as session:
        row, send = session.exec(
            select(Delivery, Send)
            .join(Send, Send.id == Delivery.send_id)  # type: ignore[arg-type]
            .where(Delivery.email == "weekly@example.com", Send.week == "2026-W48")
        ).one()
    assert send.kind == "digest"
    friday_six = berlin(MONDAY + dt.timedelta(days=4), 6).astimezone(dt.UTC).replace(tzinfo=None)
    assert row.due_at == friday_six
    assert row.sent_at == friday_six


def test_switching_to_weekly_mid_week_brings_only_the_columns_not_yet_mailed(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, weekdays(5))
    add_reader(engine, "switcher@example.com", Cadence.daily)
    add_reader(engine, "weekly@example.com", Cadence.weekly, weekday=5)

    async def steps(runs: Dispatcher, clock: Clock) -> None:
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=2), 12))  # Wed noon
        assert len(mails_to(smtp_server, "switcher@example.com")) == 3
        change(engine, settings, "switcher@example.com", clock, cadence=Cadence.weekly)
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=6), 23))

    run(engine, settings, timing.opens(settings, MONDAY) - dt.timedelta(minutes=1), steps)
    mails = mails_to(smtp_server, "switcher@example.com")
    assert [is_digest(mail) for mail in mails] == [False, False, False, True]
    assert digest_titles(mails[-1]) == [title(day) for day in weekdays(5)[3:]]


def test_switching_to_daily_mid_week_sends_what_was_missed_now_and_the_column_from_then_on(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, weekdays(5))
    add_reader(engine, "switcher@example.com", Cadence.weekly, weekday=5)

    async def steps(runs: Dispatcher, clock: Clock) -> None:
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=2), 12))  # Wed noon
        assert mails_to(smtp_server, "switcher@example.com") == []
        change(engine, settings, "switcher@example.com", clock, cadence=Cadence.daily)
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=6), 23))

    run(engine, settings, timing.opens(settings, MONDAY) - dt.timedelta(minutes=1), steps)
    mails = mails_to(smtp_server, "switcher@example.com")
    assert [is_digest(mail) for mail in mails] == [True, False, False]
    assert digest_titles(mails[0]) == [title(day) for day in weekdays(3)]
    assert [str(mail.message["Subject"]) for mail in mails[1:]] == [
        title(day) for day in weekdays(5)[3:]
    ]


def test_a_week_without_columns_sends_no_digest(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_reader(engine, "weekly@example.com", Cadence.weekly, weekday=7)

    async def steps(runs: Dispatcher, clock: Clock) -> None:
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=7), 12))

    run(engine, settings, timing.opens(settings, MONDAY) - dt.timedelta(minutes=1), steps)
    assert smtp_server.received == []
    with Session(engine) as session:
        row = session.exec(
            select(Delivery)
            .join(Send, Send.id == Delivery.send_id)  # type: ignore[arg-type]
            .where(Send.week == "2026-W48")
        ).one()
    assert (row.status, row.contents) == ("skipped", "")


def test_one_digest_a_week_even_after_changing_weekday_once_it_came(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, weekdays(7))
    add_reader(engine, "weekly@example.com", Cadence.weekly, weekday=2)  # Tuesday

    async def steps(runs: Dispatcher, clock: Clock) -> None:
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=2), 12))
        assert len(smtp_server.received) == 1  # Tuesday's
        change(engine, settings, "weekly@example.com", clock, digest_weekday=6)
        await live_until(runs, clock, berlin(MONDAY + dt.timedelta(days=6), 23))

    run(engine, settings, timing.opens(settings, MONDAY) - dt.timedelta(minutes=1), steps)
    assert len(smtp_server.received) == 1


def test_a_digest_taken_over_after_a_crash_carries_the_same_columns(
    engine: Engine, settings: Settings
) -> None:
    add_columns(engine, weekdays(3))
    add_reader(engine, "weekly@example.com", Cadence.weekly, weekday=3)  # Wednesday
    due = berlin(MONDAY + dt.timedelta(days=2), 6).astimezone(dt.UTC).replace(tzinfo=None)
    lease = dt.timedelta(seconds=60)
    with transaction(engine) as session:
        started = digests.start_week(session, settings, "2026-W48", due - dt.timedelta(days=2))
        assert started is not None
        send_id = started[0].id or 0
        claims = ledger.claim_batch(
            session, send_id=send_id, worker="first", now=due, limit=10, lease=lease
        )
        [first] = digests.settle(session, claims, due)
    # The worker dies with the row claimed; meanwhile a column of the Sunday before arrives.
    add_columns(engine, [MONDAY - dt.timedelta(days=1)])
    later = due + 2 * lease
    with transaction(engine) as session:
        claims = ledger.claim_batch(
            session, send_id=send_id, worker="second", now=later, limit=10, lease=lease
        )
        [again] = digests.settle(session, claims, later)
    assert again.id == first.id and again.contents == first.contents
    assert first.contents is not None and len(first.contents.split(",")) == 3

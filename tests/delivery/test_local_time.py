"""DELIVERY_TIMING=local: each reader gets the day's column at SEND_TIME (06:00) in their own
time zone, exactly once, through daylight-saving changes and late columns, on a clock the
test moves (nothing sleeps)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.columns import sources
from service.config import Settings
from service.db import transaction
from service.delivery import choices, timing
from service.delivery.daily import Dispatcher
from service.models import Delivery, Send, Subscriber, SubscriberStatus
from service.scheduler import daily_job
from tests.conftest import Clock
from tests.daily import dispatcher
from tests.smtp_server import SmtpTestServer

DAY = dt.date(2026, 11, 27)
TEXT = "---\ntitle: {title}\n---\n\nA short column.\n"
BEFORE_DAY = dt.datetime.combine(DAY - dt.timedelta(days=1), dt.time(0, 0))  # naive UTC
ZONES = ("Pacific/Kiritimati", "Europe/Berlin", "America/Los_Angeles", "Pacific/Pago_Pago")


def add_column(engine: Engine, day: dt.date) -> None:
    with transaction(engine) as session:
        sources.import_text(
            session, TEXT.format(title=f"Column of {day}"), fmt="markdown", date=day, name="t"
        )


def add_zoned_readers(engine: Engine, zones: tuple[str, ...]) -> dict[str, str]:
    """One active reader per zone; address by zone."""
    addresses = {}
    with transaction(engine) as session:
        for i, zone in enumerate(zones):
            addresses[zone] = f"reader{i}@example.com"
            session.add(
                Subscriber(email=addresses[zone], status=SubscriberStatus.active, timezone=zone)
            )
    return addresses


def six_am(day: dt.date, zone: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(6, 0), tzinfo=ZoneInfo(zone)).astimezone(dt.UTC)


def recipients(server: SmtpTestServer) -> list[str]:
    return [rcpt for mail in server.received for rcpt in mail.rcpt_tos]


async def heal_at(runs: Dispatcher, clock: Clock, moment: dt.datetime) -> None:
    """Move the clock to `moment` and let the process do what its heal does then."""
    clock.advance((moment - clock.now()).total_seconds())
    await runs.heal(clock.now())
    await runs.wait(None)


def test_each_zone_gets_the_column_at_six_in_the_morning_its_own_time(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    addresses = add_zoned_readers(engine, ZONES)
    add_column(engine, DAY)
    clock = Clock(timing.opens(settings, DAY).astimezone(dt.UTC))
    assert clock.now() == six_am(DAY, "Pacific/Kiritimati")  # the first zone on Earth

    async def scenario() -> list[list[str]]:
        runs = dispatcher(engine, settings, clock.now)
        await daily_job(runs, clock=clock.now)()  # the trigger, at 06:00 in UTC+14
        seen = [recipients(smtp_server)]
        for zone in ZONES[1:]:
            await heal_at(runs, clock, six_am(DAY, zone) - dt.timedelta(minutes=1))
            assert addresses[zone] not in recipients(smtp_server), f"{zone} got it early"
            await heal_at(runs, clock, six_am(DAY, zone))
            seen.append(recipients(smtp_server))
        return seen

    seen = asyncio.run(scenario())
    assert seen == [[addresses[z] for z in ZONES[: i + 1]] for i in range(len(ZONES))]
    with Session(engine) as session:
        rows = session.exec(select(Delivery)).all()
        send = session.exec(select(Send)).one()
    assert send.status == "done"
    for row in rows:
        zone = next(z for z, a in addresses.items() if a == row.email)
        assert (row.zone, row.due_at) == (zone, six_am(DAY, zone).replace(tzinfo=None))
        assert row.sent_at == row.due_at  # handed over on the minute, not a heal later


def test_one_mail_a_day_through_daylight_saving_changes(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    """Berlin springs forward on 29 March 2026 and falls back on 25 October; New York on 8
    March and 1 November. Three days around each, the clock moved through every hour and to
    a minute before each reader's 06:00: each reader gets one mail a day, each at 06:00
    local to the minute."""
    zones = ("Europe/Berlin", "America/New_York")
    addresses = add_zoned_readers(engine, zones)
    changes = (
        dt.date(2026, 3, 8),
        dt.date(2026, 3, 29),
        dt.date(2026, 10, 25),
        dt.date(2026, 11, 1),
    )
    days = sorted({change + dt.timedelta(days=d) for change in changes for d in (-1, 0, 1)})
    for day in days:
        add_column(engine, day)

    async def scenario() -> None:
        for change in changes:
            window = [change + dt.timedelta(days=d) for d in (-1, 0, 1)]
            start = timing.opens(settings, window[0]).astimezone(dt.UTC)
            clock = Clock(start)
            runs = dispatcher(engine, settings, clock.now)
            hours = int((timing.closes(settings, window[-1]) - start).total_seconds() // 3600)
            moments = {start + dt.timedelta(hours=h) for h in range(hours + 2)}
            for day in window:  # and a minute before and at each reader's 06:00
                for zone in zones:
                    moments |= {six_am(day, zone) - dt.timedelta(minutes=1), six_am(day, zone)}
            for moment in sorted(moments):
                await heal_at(runs, clock, moment)

    asyncio.run(scenario())
    with Session(engine) as session:
        rows = session.exec(select(Delivery)).all()
    sent = [row for row in rows if row.status == "sent"]
    assert Counter(row.email for row in sent) == {
        address: len(days) for address in addresses.values()
    }
    for row in sent:
        assert row.zone is not None and row.due_at is not None and row.sent_at is not None
        local = row.due_at.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(row.zone))
        assert (local.hour, local.minute) == (6, 0)
        assert row.sent_at == row.due_at  # not a minute before, not a heal late
    assert len(smtp_server.received) == len(sent)


def test_a_late_column_goes_at_once_to_zones_past_six_and_on_time_to_the_rest(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    addresses = add_zoned_readers(engine, ZONES)
    # The column arrives at 09:00 in Berlin: Kiritimati and Berlin are past 06:00.
    arrival = six_am(DAY, "Europe/Berlin") + dt.timedelta(hours=3)
    clock = Clock(timing.opens(settings, DAY).astimezone(dt.UTC))

    async def scenario() -> None:
        runs = dispatcher(engine, settings, clock.now)
        await daily_job(runs, clock=clock.now)()  # no column yet: nothing happens
        assert smtp_server.received == []
        add_column(engine, DAY)
        await heal_at(runs, clock, arrival)
        assert sorted(recipients(smtp_server)) == sorted(
            [addresses["Pacific/Kiritimati"], addresses["Europe/Berlin"]]
        )
        await heal_at(runs, clock, six_am(DAY, "America/Los_Angeles") - dt.timedelta(minutes=1))
        assert len(smtp_server.received) == 2
        await heal_at(runs, clock, six_am(DAY, "Pacific/Pago_Pago"))
        assert len(smtp_server.received) == 4

    asyncio.run(scenario())
    with Session(engine) as session:
        late = session.exec(
            select(Delivery).where(Delivery.email == addresses["Europe/Berlin"])
        ).one()
    assert late.sent_at == arrival.replace(tzinfo=None)


def test_a_reader_who_moves_before_their_row_is_due_gets_it_at_the_new_zones_time(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    addresses = add_zoned_readers(engine, ("Europe/Berlin", "America/Los_Angeles"))
    add_column(engine, DAY)
    clock = Clock(timing.opens(settings, DAY).astimezone(dt.UTC))

    def move(address: str, zone: str) -> int:
        with transaction(engine) as session:
            reader = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
            reader.timezone = zone
            session.flush()
            return choices.reader_changed(session, settings, reader, clock.now())

    async def scenario() -> None:
        runs = dispatcher(engine, settings, clock.now)
        await daily_job(runs, clock=clock.now)()
        # Before either is due: the Angeleno moves to Tokyo (due earlier than Berlin now).
        assert move(addresses["America/Los_Angeles"], "Asia/Tokyo") == 1
        await heal_at(runs, clock, six_am(DAY, "Asia/Tokyo"))
        assert recipients(smtp_server) == [addresses["America/Los_Angeles"]]
        await heal_at(runs, clock, six_am(DAY, "Europe/Berlin"))
        assert len(smtp_server.received) == 2
        # After their row went: moving west changes nothing, and no second copy comes.
        assert move(addresses["Europe/Berlin"], "America/Los_Angeles") == 0
        await heal_at(runs, clock, six_am(DAY, "America/Los_Angeles"))
        assert len(smtp_server.received) == 2

    asyncio.run(scenario())
    with Session(engine) as session:
        moved = session.exec(
            select(Delivery).where(Delivery.email == addresses["America/Los_Angeles"])
        ).one()
    assert (moved.zone, moved.sent_at) == (
        "Asia/Tokyo",
        six_am(DAY, "Asia/Tokyo").replace(tzinfo=None),
    )


def test_a_fixed_time_send_goes_to_every_zone_at_once(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    settings = settings.model_copy(update={"delivery_timing": "fixed"})
    add_zoned_readers(engine, ZONES)
    add_column(engine, DAY)
    at = dt.datetime.combine(DAY, dt.time(6, 0), tzinfo=dt.UTC)
    runs = dispatcher(engine, settings, lambda: at)
    asyncio.run(daily_job(runs, clock=lambda: at)())
    assert len(smtp_server.received) == len(ZONES)


def test_the_snapshot_is_one_statement_however_many_zones_and_readers(
    engine: Engine, settings: Settings
) -> None:
    from sqlalchemy import event

    with transaction(engine) as session:
        for i in range(60):
            zone = ZONES[i % len(ZONES)] if i % 5 else None  # None: the service's TIMEZONE
            session.add(Subscriber(email=f"r{i}@example.com", status="active", timezone=zone))
    add_column(engine, DAY)
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "INSERT INTO DELIVERIES" in statement.upper():
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        from service.columns import store
        from service.delivery.daily import start_send

        with transaction(engine) as session:
            column = store.column_for(session, DAY)
        assert column is not None
        # The day before, so that every zone's 06:00 is still ahead (a due moment already
        # past is due at once, and they would all be "now").
        send, created = start_send(engine, settings, column, now=BEFORE_DAY)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert created and send.total == 60
    assert len(statements) == 1
    with Session(engine) as session:
        rows = session.exec(select(Delivery).order_by(Delivery.id)).all()
    zones = Counter(row.zone for row in rows)
    assert zones == {**{zone: 12 for zone in ZONES}, settings.timezone: 12}
    # Laid out in the order they are claimed (due moment, reader): a claim's rows and each
    # group commit's marks then sit side by side, not one page apiece across the table.
    order = [(row.next_attempt_at, row.subscriber_id) for row in rows]
    assert order == sorted(order) and len({due for due, _ in order}) > 1

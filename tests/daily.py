"""The daily send, arranged: readers by status, the seed column's send, the courier that
points at the test relay, and the scheduler's jobs run with a clock of the test's choosing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from sqlalchemy.engine import Engine

from service.columns import store
from service.config import Settings
from service.context import build_context
from service.db import transaction
from service.delivery import daily, sends
from service.delivery.courier import Courier
from service.delivery.daily import Dispatcher
from service.mail.smtp import relay_target
from service.models import Send, Subscriber, SubscriberStatus
from service.scheduler import daily_job

SEED_DAY = dt.date(2016, 2, 4)
AT_SEND_TIME = dt.datetime(2016, 2, 4, 6, 0, tzinfo=dt.UTC)


def add_readers(engine: Engine, **by_status: int) -> dict[str, list[str]]:
    """Readers by status, e.g. add_readers(engine, active=3, pending=1)."""
    made: dict[str, list[str]] = {}
    with transaction(engine) as session:
        for status, count in by_status.items():
            for i in range(count):
                address = f"{status}{i}@example.com"
                session.add(
                    Subscriber(email=address, name=f"Reader {i}", status=SubscriberStatus(status))
                )
                made.setdefault(status, []).append(address)
    return made


def start_seed_send(engine: Engine, settings: Settings) -> Send:
    """Import the seed column and start its send (snapshotting the active readers)."""
    daily.refresh_columns(engine, settings)
    with transaction(engine) as session:
        column = store.column_for(session, SEED_DAY)
        assert column is not None
        send, _created = sends.start(session, column=column)
    return send


def courier(
    engine: Engine, settings: Settings, clock: Callable[[], dt.datetime] | None = None
) -> Courier:
    """What delivering needs, pointed at the test relay (on the test's clock, if given)."""
    target = relay_target(settings)
    assert target is not None
    if clock is None:
        return Courier(engine, build_context(settings), target)
    return Courier(engine, build_context(settings), target, clock=clock)


def dispatcher(
    engine: Engine, settings: Settings, clock: Callable[[], dt.datetime] | None = None
) -> Dispatcher:
    return Dispatcher(courier(engine, settings, clock))


def run_job(engine: Engine, settings: Settings, now: dt.datetime = AT_SEND_TIME) -> None:
    """What the cron trigger does at SEND_TIME on `now`'s day."""
    asyncio.run(daily_job(dispatcher(engine, settings), clock=lambda: now)())


def catch_up(engine: Engine, settings: Settings, now: dt.datetime) -> None:
    """What a process does at start-up, waiting for the runs it starts."""

    async def start_and_wait() -> None:
        runs = dispatcher(engine, settings)
        await runs.catch_up(now)
        await runs.wait(None)

    asyncio.run(start_and_wait())

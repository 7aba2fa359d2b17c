"""The clock, raced: several processes firing at the same minute make one send, and the
nights when daylight saving starts or ends make one send each."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.delivery.daily import Dispatcher
from service.mail.smtp import relay_target
from service.models import ColumnRecord, Send
from service.scheduler import daily_job, daily_trigger
from tests import processes
from tests.conftest import make_settings
from tests.daily import add_readers, courier
from tests.helpers import eventually, sends_done
from tests.smtp_server import SmtpTestServer


def test_two_workers_and_a_server_firing_at_one_minute_make_one_send(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("several processes share one PostgreSQL")
    fire_at, send_time = processes.send_time_ahead(tmp_path / "columns", start_up=20)
    readers = processes.add_readers(engine, 600)
    env = processes.environment(
        database_url, tmp_path / "var", smtp_server.url, **send_time, delivery_batch_size=20
    )
    started = [
        processes.start("worker", env=env, log=tmp_path / "worker-1.log"),
        processes.start("worker", env=env, log=tmp_path / "worker-2.log"),
    ]
    try:
        with processes.serving(env=env, log=tmp_path / "serve.log"):
            wait = (fire_at - dt.datetime.now(dt.UTC)).total_seconds() + 60
            assert eventually(
                lambda: len(smtp_server.received) >= len(readers), timeout=wait, every=0.5
            )
            # Anything extra would be a hand-off the ledger has not closed: wait until it has.
            assert eventually(lambda: sends_done(engine), timeout=30, every=0.5)
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=20)
    assert all(r.at >= fire_at for r in smtp_server.received)  # nothing before SEND_TIME
    got = smtp_server.per_recipient()
    assert sorted(got) == readers and set(got.values()) == {1}
    with Session(engine) as session:
        assert len(session.exec(select(Send)).all()) == 1
    assert dt.datetime.now(dt.UTC) >= fire_at


@pytest.mark.parametrize(
    "day",
    [dt.date(2026, 3, 29), dt.date(2026, 10, 25)],  # Berlin springs forward, falls back
    ids=["spring-forward", "fall-back"],
)
def test_a_daylight_saving_night_makes_exactly_one_send(
    day: dt.date,
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
) -> None:
    folder = tmp_path / "columns"
    processes.todays_column(folder, day)
    # 02:30 does not exist on the spring night and happens twice on the autumn one.
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        columns_dir=folder,
        send_time="02:30",
        timezone="Europe/Berlin",
        delivery_timing="fixed",  # the trigger in Berlin (local mode: tests/delivery)
    )
    add_readers(engine, active=3)
    trigger = daily_trigger(settings)
    fires: list[dt.datetime] = []
    moment = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(12), tzinfo=settings.tz)
    while len(fires) < 5:
        fire = trigger.get_next_fire_time(None, moment)
        assert fire is not None
        if fire.astimezone(settings.tz).date() > day:
            break
        if fire.astimezone(settings.tz).date() == day:
            fires.append(fire)
        moment = fire.astimezone(dt.UTC) + dt.timedelta(seconds=1)
    assert fires, "the trigger never fired that day"
    assert relay_target(settings) is not None
    for fire in fires:  # what the scheduler does at each firing, with that clock
        runs = Dispatcher(courier(engine, settings))
        asyncio.run(daily_job(runs, clock=lambda f=fire: f)())
    with Session(engine) as session:
        [column] = session.exec(select(ColumnRecord)).all()
        assert column.date == day
        assert len(session.exec(select(Send)).all()) == 1
    got = smtp_server.per_recipient()
    assert len(got) == 3 and set(got.values()) == {1}

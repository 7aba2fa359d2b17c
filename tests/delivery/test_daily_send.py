"""The daily send end to end: the scheduled job delivers the seed column exactly once to
every active reader, over a real SMTP server, with every header a mail provider reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import logging
from email import message_from_bytes

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.db import transaction
from service.delivery import sends
from service.delivery.worker import SendWorker
from service.mail.smtp import relay_target
from service.models import Delivery, Send, Subscriber, SubscriberStatus
from service.scheduler import daily_trigger
from service.web.app import create_app
from tests.conftest import SEED
from tests.daily import (
    AT_SEND_TIME,
    SEED_DAY,
    add_readers,
    catch_up,
    courier,
    dispatcher,
    run_job,
    start_seed_send,
)
from tests.helpers import body, reader
from tests.smtp_server import SmtpTestServer


def test_scheduled_job_delivers_once_to_each_active_reader_and_to_nobody_else(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    readers = add_readers(engine, active=3, pending=1, unsubscribed=1, bounced=1)
    run_job(engine, settings)
    received = smtp_server.wait_for(3)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(readers["active"])
    run_job(engine, settings)  # the trigger firing again changes nothing
    assert len(smtp_server.received) == 3
    with Session(engine) as session:
        send = session.exec(select(Send)).one()
        assert send.status == "done" and send.total == 3 and send.finished_at is not None
        assert sends.counts(session, send.id or 0) == sends.SendCounts(
            total=3, sent=3, failed=0, pending=0
        )


def test_delivered_message_has_every_header_and_working_unsubscribe(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=1)
    run_job(engine, settings)
    [mail] = smtp_server.wait_for(1)
    assert mail.mail_from == "bounces@news.example.com"  # envelope sender, not From
    msg = message_from_bytes(mail.data, policy=email.policy.default)
    assert (
        msg["Subject"] == "Syria Peace Talks Collapse as Russia Carpet Bombs Opposition in Aleppo"
    )
    assert msg["From"].addresses[0].display_name == "World View"
    assert msg["From"].addresses[0].addr_spec == "worldview@news.example.com"
    assert msg["To"].addresses[0].addr_spec == "active0@example.com"
    assert msg["Date"].datetime is not None
    assert (
        msg["Message-ID"].startswith("<column.2016-02-04.")
        and "@news.example.com>" in msg["Message-ID"]
    )
    assert "world-view.news.example.com" in msg["List-Id"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Feedback-ID"]
    assert "Return-Path" not in msg and "Reply-To" not in msg
    raw_headers = mail.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert "\r\nList-Unsubscribe: <https://news.example.com/unsubscribe/" in raw_headers
    assert "mailto:" not in raw_headers  # no bounce receiver configured: HTTPS only
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    for part in msg.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert all(len(line) <= 76 for line in mail.data.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))

    unsubscribe = msg["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
    path = unsubscribe.removeprefix("https://news.example.com")
    with TestClient(create_app(settings, engine, scheduler=False)) as client:
        assert "Unsubscribe" in client.get(path).text
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert reader(engine, "active0@example.com").status == SubscriberStatus.unsubscribed


def test_retried_message_keeps_its_message_id(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=1)
    smtp_server.reply_to_rcpt("active0@example.com", "451 4.7.1 Greylisted, try later")
    run_job(engine, settings)
    [mail] = smtp_server.wait_for(1)
    with Session(engine) as session:
        delivery = session.exec(select(Delivery)).one()
    assert delivery.status == "sent" and delivery.attempts == 2
    assert (
        mail.message["Message-ID"]
        == f"<column.2016-02-04.{delivery.send_id}.{delivery.subscriber_id}@news.example.com>"
    )


def test_two_schedulers_firing_at_once_make_one_send(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=20)

    async def both() -> None:
        await asyncio.gather(
            dispatcher(engine, settings).run_daily(SEED_DAY),
            dispatcher(engine, settings).run_daily(SEED_DAY),
        )

    asyncio.run(both())
    received = smtp_server.wait_for(20)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(
        f"active{i}@example.com" for i in range(20)
    )
    with Session(engine) as session:
        assert len(session.exec(select(Send)).all()) == 1


def test_readers_who_subscribe_after_the_start_wait_for_the_next_column(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=2)
    send = start_seed_send(engine, settings)
    assert send.total == 2
    add_readers(engine, pending=0, active=0)
    with transaction(engine) as session:
        session.add(Subscriber(email="late@example.com", status=SubscriberStatus.active))
    assert relay_target(settings) is not None
    asyncio.run(SendWorker(courier(engine, settings)).run(send.id or 0))
    assert not smtp_server.messages_to("late@example.com")
    assert len(smtp_server.wait_for(2)) == 2


def test_no_column_today_sends_nothing_and_says_so(
    engine: Engine,
    settings: Settings,
    smtp_server: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_readers(engine, active=2)
    with caplog.at_level(logging.INFO, logger="service.delivery.daily"):
        run_job(engine, settings, now=dt.datetime(2016, 2, 5, 6, 0, tzinfo=dt.UTC))
    assert [r.message for r in caplog.records if "no column" in r.message] == [
        "no column for 2016-02-05: nothing sent today"
    ]
    assert smtp_server.received == []
    with Session(engine) as session:
        assert session.exec(select(Send)).all() == []


def test_catch_up_sends_within_grace_and_not_after(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    settings = settings.model_copy(update={"delivery_timing": "fixed"})
    add_readers(engine, active=1)
    too_late = AT_SEND_TIME + settings.send_grace + dt.timedelta(minutes=1)
    catch_up(engine, settings, too_late)
    assert smtp_server.received == []
    catch_up(engine, settings, AT_SEND_TIME + dt.timedelta(hours=2))
    assert len(smtp_server.wait_for(1)) == 1


def test_local_catch_up_lasts_until_the_last_zone_is_past_its_grace(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=1)
    last_zone_due = dt.datetime(2016, 2, 4, 18, 0, tzinfo=dt.UTC)  # 06:00 at UTC-12
    too_late = last_zone_due + settings.send_grace + dt.timedelta(minutes=1)
    catch_up(engine, settings, too_late)
    assert smtp_server.received == []
    catch_up(engine, settings, AT_SEND_TIME + dt.timedelta(hours=2))
    assert len(smtp_server.wait_for(1)) == 1


def test_catch_up_resumes_an_interrupted_send(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=3)
    start_seed_send(engine, settings)  # started, then the process died
    next_day = dt.datetime(2016, 2, 5, 12, 0, tzinfo=dt.UTC)  # long past the grace
    catch_up(engine, settings, next_day)
    assert len(smtp_server.wait_for(3)) == 3


def test_daily_trigger_follows_send_time_across_daylight_saving(
    database_url: str, tmp_path: object
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(
        database_url,
        tmp_path / "var",  # type: ignore[operator]
        send_time="06:00",
        timezone="Europe/Berlin",
        delivery_timing="fixed",
    )
    trigger = daily_trigger(settings)
    before = dt.datetime(2026, 3, 27, 7, 0, tzinfo=settings.tz)  # CEST starts on 29 March
    fires = []
    for _ in range(3):
        before = trigger.get_next_fire_time(None, before)
        fires.append(before)
        before = before + dt.timedelta(seconds=1)
    assert [f.astimezone(settings.tz).hour for f in fires] == [6, 6, 6]
    assert [f.astimezone(dt.UTC).hour for f in fires] == [5, 4, 4]  # CET, then CEST


def test_local_send_starts_when_the_earliest_zone_reaches_send_time(settings: Settings) -> None:
    trigger = daily_trigger(settings)  # DELIVERY_TIMING=local, the default
    fires = [trigger.get_next_fire_time(None, dt.datetime(2026, 3, 27, 7, 0, tzinfo=dt.UTC))]
    for _ in range(3):
        fires.append(trigger.get_next_fire_time(None, fires[-1] + dt.timedelta(seconds=1)))
    # 06:00 at UTC+14 is 16:00 UTC the day before, whatever daylight saving does elsewhere.
    assert [f.astimezone(dt.UTC) for f in fires] == [
        dt.datetime(2026, 3, day, 16, 0, tzinfo=dt.UTC) for day in (27, 28, 29, 30)
    ]


def test_seed_column_mail_contains_every_paragraph(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=1)
    run_job(engine, settings)
    [mail] = smtp_server.wait_for(1)
    text, html = body(mail, "plain"), body(mail, "html")
    flat_text = " ".join(text.split())
    paragraphs = [line.strip() for line in SEED.read_text().splitlines() if len(line.strip()) > 120]
    assert len(paragraphs) >= 10
    for paragraph in paragraphs:
        assert " ".join(paragraph.split()) in flat_text
        assert paragraph.split(" ")[0] in html
    assert len(html.encode()) < 100_000

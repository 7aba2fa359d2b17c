"""The weekly digest's preview and test copy: an ISO week named as its send names it, the
columns dated in that week (none cancelled, no reader's history), the exact mail a weekly
reader would get, and a test copy that makes no send and changes no reader."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.columns import store
from service.config import Settings
from service.db import transaction
from service.delivery import daily, digests, sends
from service.mail import message
from service.models import Cadence, ColumnRecord, Delivery, Send, Subscriber
from service.tokens import Purpose
from tests.daily import courier
from tests.delivery.test_digest_send import MONDAY, add_columns, add_reader, title
from tests.helpers import body, links, path_of
from tests.smtp_server import SmtpTestServer

WEEK = "2026-W48"  # MONDAY's


def day(offset: int) -> dt.date:
    return MONDAY + dt.timedelta(days=offset)


@pytest.mark.parametrize(
    ("given", "named"),
    [("2026-W48", "2026-W48"), (" 2026-w48 ", "2026-W48"), ("2026-W53", "2026-W53")],
)
def test_a_week_is_named_the_way_its_digest_send_names_it(given: str, named: str) -> None:
    assert digests.week_named(given) == named


@pytest.mark.parametrize(
    "given",
    ["2026-48", "2026-W5", "W48", "2026-W00", "2025-W53", "9999-W52", "2026-W48-1", "next", ""],
)
def test_anything_else_is_refused_saying_the_form(given: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO week like 2026-W48"):
        digests.week_named(given)


def test_the_preview_holds_the_columns_dated_in_the_week_and_none_cancelled(
    engine: Engine,
) -> None:
    add_columns(engine, [day(-1), day(0), day(2), day(3), day(6), day(7)])
    with transaction(engine) as session:
        thursday = store.column_for(session, day(3))
        assert thursday is not None
        store.schedule(session, thursday.id or 0, send_at=None, cancelled=True)
    with Session(engine) as session:
        columns = digests.preview_columns(session, week=WEEK)
    assert [c.date for c in columns] == [day(0), day(2), day(6)]


def test_a_week_without_a_column_has_no_digest_to_preview(engine: Engine) -> None:
    add_columns(engine, [day(-1), day(7)])  # the Sunday before and the Monday after
    with pytest.raises(digests.NoDigest, match=f"no column in {WEEK}"):
        daily.digest_columns(engine, WEEK)


@pytest.mark.parametrize("week", ["0001-W01", "9999-W51"])
def test_the_first_and_last_weeks_of_the_calendar_are_weeks_without_a_column(
    engine: Engine, week: str
) -> None:
    with pytest.raises(digests.NoDigest):  # not an overflow at either end of the calendar
        daily.digest_columns(engine, digests.week_named(week))


def test_the_preview_is_the_digest_a_weekly_reader_gets_even_of_columns_already_sent(
    engine: Engine, settings: Settings
) -> None:
    add_columns(engine, [day(0), day(1), day(4)])
    add_reader(engine, "weekly@example.com", Cadence.weekly)
    with transaction(engine) as session:  # Monday's column went out to the daily readers
        monday = store.column_for(session, day(0))
        assert monday is not None
        sends.start(session, column=monday)
    columns = daily.digest_columns(engine, WEEK)
    data = daily.digest_copy(
        courier(engine, settings),
        WEEK,
        columns,
        to="reader@example.com",
        name="Reader",
        subscriber_id=0,
    )
    shown = message.read_back(data)
    assert shown.subject.endswith("your week: 23\u201327 November 2026")
    assert [t for t in map(title, (day(i) for i in range(7))) if t in shown.text] == [
        title(day(0)),
        title(day(1)),
        title(day(4)),
    ]
    assert f"<digest.{WEEK}.preview-" in data.decode("ascii", "replace")
    with Session(engine) as session:
        assert len(session.exec(select(Send)).all()) == 1  # Monday's send only, no digest's


def test_a_test_copy_to_a_readers_address_has_their_links_and_changes_nothing(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, [day(1), day(2)])
    add_reader(engine, "weekly@example.com", Cadence.weekly)
    with Session(engine) as session:
        before = session.exec(select(Subscriber)).one()
    columns = daily.digest_columns(engine, WEEK)
    mailer = courier(engine, settings)
    reply = asyncio.run(daily.send_digest_test_copy(mailer, WEEK, columns, "weekly@example.com"))
    assert reply is None
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["weekly@example.com"]
    assert str(mail.message["Message-ID"]).startswith(f"<digest.{WEEK}.preview-")
    assert title(day(1)) in body(mail, "plain") and title(day(2)) in body(mail, "plain")
    [preferences] = links(mail, "/preferences/")
    token = path_of(preferences).removeprefix("/preferences/")
    assert mailer.ctx.tokens.read(Purpose.preferences, token) == str(before.id)
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).one() == before
        assert session.exec(select(Send)).all() == []
        assert session.exec(select(Delivery)).all() == []
        assert len(session.exec(select(ColumnRecord)).all()) == 2

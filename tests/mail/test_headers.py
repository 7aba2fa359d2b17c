"""Headers that carry column and reader text: RFC 2047-encoded where needed, ASCII on the wire,
folded within 78 characters, and dated with the configured zone's real offset."""

from __future__ import annotations

import datetime as dt
import email.header
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from zoneinfo import ZoneInfo

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from service.columns.mail import prepare_column
from service.columns.model import ParsedColumn
from service.columns.sources import import_text
from service.columns.view import ColumnView
from service.config import Settings
from service.db import transaction
from service.mail import message
from tests.conftest import make_settings
from tests.daily import run_job
from tests.helpers import add_reader
from tests.smtp_server import SmtpTestServer

TITLE = "Zürich Talks: Łukasz Meets Erdoğan"
NAME = "Zoë Ångström 王小明"
DAY = dt.date(2026, 11, 26)
AT_SEND_TIME = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
READER = "zoe@example.com"
UNSUBSCRIBE = "https://news.example.com/unsubscribe/tok-zoe-123"
FEEDBACK = "https://news.example.com/feedback?t=fb-zoe"
PREFERENCES = "https://news.example.com/preferences/pref-zoe"
DST_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "America/St_Johns"]


def parse(data: bytes) -> EmailMessage:
    parsed = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def header_lines(data: bytes) -> list[str]:
    return data.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")


def raw_value(data: bytes, field: str) -> str:
    """The header's value as written, unfolded (RFC 5322 2.2.3)."""
    block = data.split(b"\r\n\r\n", 1)[0].decode("ascii") + "\r\n"
    found = re.findall(rf"^{field}: ?(.*?)\r\n(?![ \t])", block, re.M | re.S | re.I)
    assert len(found) == 1, f"{len(found)} {field} headers"
    return re.sub(r"\r\n(?=[ \t])", "", found[0])


def display_name(data: bytes, field: str) -> str:
    """The phrase before <…> as a mail program reads it.

    Python 3.11's address parser keeps the space between two adjacent encoded-words, which
    RFC 2047 6.2 says to ignore (CPython gh-128110), so encoded-words are decoded the RFC way
    here; a plain or quoted phrase is read by the standard library's address parser."""
    value = raw_value(data, field)
    if not value.startswith("=?"):
        parsed = email.policy.default.header_factory("To", value)
        return str(parsed.addresses[0].display_name)  # type: ignore[attr-defined]
    phrase = value.rsplit(" <", 1)[0]
    decoded = email.header.decode_header(phrase)
    assert all(charset == "utf-8" for _, charset in decoded), decoded
    return b"".join(part for part, _ in decoded).decode()  # type: ignore[misc]


def assert_wire_headers(data: bytes) -> None:
    """RFC 5322 2.1.1 and 2.2: ASCII, ≤ 998 always, ≤ 78 here (only a long List-Unsubscribe
    may pass it, since it is never encoded); RFC 2047 2: encoded-words ≤ 75."""
    lines = header_lines(data)
    assert all(len(line) <= 998 for line in lines)
    assert all(
        len(word) <= 75 for word in re.findall(r"=\?[^?\s]+\?[bq]\?[^?\s]*\?=", "\n".join(lines))
    )
    unsubscribe = False
    for line in lines:
        if line.startswith("List-Unsubscribe:"):
            unsubscribe = True
        elif not line.startswith((" ", "\t")):
            unsubscribe = False
        assert unsubscribe or len(line) <= 78, line
    assert all(line.strip() for line in lines[1:]), "a blank line would end the header early"


def assert_dated_in(data: bytes, zone: ZoneInfo) -> None:
    """The Date carries the zone's offset at the moment of sending (RFC 5322 3.3), not -0000."""
    value = raw_value(data, "Date")
    sent = parse(data)["Date"].datetime
    assert sent.tzinfo is not None, value
    assert abs(sent - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    offset = sent.astimezone(zone).utcoffset()
    assert sent.utcoffset() == offset
    assert value.endswith(" " + sent.astimezone(zone).strftime("%z")), value
    assert not value.endswith("-0000")


def cleaned(text: str) -> str:
    """What the builders make of header text: control characters and runs of white space
    become one space, none at the ends."""
    return " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())


# The reported failure, end to end


def store_column(engine: Engine, title: str, day: dt.date = DAY) -> None:
    text = f'---\ntitle: "{title}"\n---\n\nThe talks went on through the night.\n'
    with transaction(engine) as session:
        import_text(session, text, fmt="markdown", date=day, name="test")


def test_a_non_ascii_title_reaches_a_reader_with_a_non_ascii_name(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    store_column(engine, TITLE)
    add_reader(engine, READER, name=NAME)

    run_job(engine, settings, now=AT_SEND_TIME)

    [mail] = smtp_server.wait_for(1)
    received = parse(mail.data)
    assert mail.rcpt_tos == [READER]
    assert received["Subject"] == TITLE
    assert "=?utf-8?" in raw_value(mail.data, "Subject")
    assert display_name(mail.data, "To") == NAME
    assert received["To"].addresses[0].addr_spec == READER
    assert_wire_headers(mail.data)


def test_the_daily_column_is_dated_in_the_configured_zone(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    berlin = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, timezone="Europe/Berlin"
    )
    store_column(engine, "Talks in Berlin")
    add_reader(engine, READER, name="Zoe")

    run_job(engine, berlin, now=AT_SEND_TIME)

    [mail] = smtp_server.wait_for(1)
    assert_dated_in(mail.data, ZoneInfo("Europe/Berlin"))


def test_a_confirmation_mail_from_a_non_ascii_site_arrives_encoded_and_dated(
    make_client: Callable[..., TestClient], smtp_server: SmtpTestServer
) -> None:
    client = make_client(from_name="Weltsicht Zürich", timezone="Europe/Berlin")

    response = client.post("/subscribe", data={"email": READER, "name": NAME})

    assert response.status_code == 200
    [mail] = smtp_server.wait_for(1, to=READER)
    assert display_name(mail.data, "From") == "Weltsicht Zürich"
    assert "Weltsicht Zürich" in parse(mail.data)["Subject"]
    assert "=?utf-8?" in raw_value(mail.data, "Subject")
    assert_wire_headers(mail.data)
    assert_dated_in(mail.data, ZoneInfo("Europe/Berlin"))


# Dates


@pytest.mark.parametrize(
    ("zone", "utc", "expected"),
    [
        ("Europe/Berlin", dt.datetime(2026, 11, 26, 12, 8, 26), "Thu, 26 Nov 2026 13:08:26 +0100"),
        ("Europe/Berlin", dt.datetime(2026, 7, 1, 6, 0, 0), "Wed, 01 Jul 2026 08:00:00 +0200"),
        ("America/New_York", dt.datetime(2026, 3, 8, 6, 59, 59), "Sun, 08 Mar 2026 01:59:59 -0500"),
        ("America/New_York", dt.datetime(2026, 3, 8, 7, 0, 0), "Sun, 08 Mar 2026 03:00:00 -0400"),
        ("UTC", dt.datetime(2026, 11, 26, 12, 8, 26), "Thu, 26 Nov 2026 12:08:26 +0000"),
    ],
)
def test_dates_carry_the_zones_offset_at_that_moment(zone, utc, expected):
    when = utc.replace(tzinfo=dt.UTC).timestamp()

    assert message.date_value(ZoneInfo(zone), when) == expected


# The column mail, built directly


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("headers")


def config(var_dir: Path, **overrides: object) -> Settings:
    return make_settings(f"sqlite:///{var_dir / 'unused.db'}", var_dir / "var", **overrides)


def column_mail(settings: Settings, *, title: str = "Talks", name: str = "Zoe") -> bytes:
    view = ColumnView.from_parsed(ParsedColumn(title=title), slug="2026-11-26-talks", date=DAY)
    return prepare_column(view, settings).message_bytes(
        to=READER,
        name=name,
        unsubscribe_url=UNSUBSCRIBE,
        feedback_url=FEEDBACK,
        preferences_url=PREFERENCES,
        message_id="<column.2026-11-26.1.1@news.example.com>",
    )


def transactional_mail(settings: Settings, *, subject: str = "Confirm", name: str = "") -> bytes:
    rendered = message.Rendered(subject=subject, text="Hello.\n", html="<p>Hello.</p>\n")
    return message.to_bytes(message.build(settings, to=READER, rendered=rendered, to_name=name))


@pytest.mark.parametrize("zone", ["UTC", *DST_ZONES])
def test_column_and_transactional_mail_are_dated_in_the_configured_zone(var_dir, zone):
    settings = config(var_dir, timezone=zone)

    for data in (column_mail(settings), transactional_mail(settings)):
        assert_dated_in(data, ZoneInfo(zone))


def test_utc_is_written_as_plus_0000(var_dir):
    settings = config(var_dir, timezone="UTC")

    for data in (column_mail(settings), transactional_mail(settings)):
        assert raw_value(data, "Date").endswith(" +0000")


def test_columns_of_two_zones_built_in_the_same_second_keep_their_own_offsets(var_dir):
    kolkata, utc = config(var_dir, timezone="Asia/Kolkata"), config(var_dir, timezone="UTC")

    dates = [raw_value(column_mail(s), "Date") for s in (kolkata, utc, kolkata, utc)]

    assert [d[-5:] for d in dates] == ["+0530", "+0000", "+0530", "+0000"]


@pytest.mark.parametrize(
    "title",
    [
        "World View: Syria Peace Talks Collapse in Aleppo",
        "World View: Syria Peace Talks Collapse as Russia Carpet Bombs Opposition in Aleppo",
    ],
    ids=["one-line", "folded"],
)
def test_an_ascii_title_stays_readable_and_unencoded(var_dir, title):
    data = column_mail(config(var_dir), title=title)

    assert raw_value(data, "Subject") == title
    assert_wire_headers(data)


def test_a_non_ascii_list_id_phrase_is_encoded_and_decodes_back(var_dir):
    settings = config(var_dir, list_id="Weltsicht Zürich <world-view.example.com>")

    data = column_mail(settings)

    assert raw_value(data, "List-Id").startswith("=?utf-8?")
    assert display_name(data, "List-Id") == "Weltsicht Zürich"
    assert raw_value(data, "List-Id").endswith(" <world-view.example.com>")
    assert_wire_headers(data)


def test_non_ascii_subject_and_names_of_a_transactional_mail_are_encoded(var_dir):
    settings = config(var_dir, from_name="Weltsicht Zürich")

    data = transactional_mail(settings, subject=f"Bestätigen: {TITLE}", name=NAME)

    assert parse(data)["Subject"] == f"Bestätigen: {TITLE}"
    assert display_name(data, "To") == NAME
    assert display_name(data, "From") == "Weltsicht Zürich"
    assert_wire_headers(data)


# Any text at all, through the real builders

# Pieces that have tripped header encoders: specials of RFC 5322 3.2.3, what looks like an
# encoded-word, RTL and CJK scripts, emoji sequences, combining marks, odd white space.
AWKWARD = st.sampled_from(
    [
        '"', "\\", "=?", "?=", "<", ">", ",", ";", "@", "(", ")", ":", ".", "'", " ", "   ",
        "\t", "\n", "=?utf-8?q?x?=", "王小明", "שָׁלוֹם", "مرحبا بك", "👩\u200d👩\u200d👧", "e\u0301",
        "\u200f", "\xa0", "Ω" * 40, "x" * 90,
    ]
)  # fmt: skip
ANY_CHAR = st.characters(exclude_categories=["Cs"])
TEXT = st.lists(st.one_of(st.text(ANY_CHAR, max_size=40), AWKWARD), max_size=30).map("".join)
# Settings refuse line breaks and NUL in FROM_NAME.
SETTING_TEXT = TEXT.map(lambda text: re.sub(r"[\r\n\x00]", "", text))
PROPERTY = hypothesis.settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


def assert_round_trip(data: bytes, *, subject: str, name: str, from_name: str) -> None:
    parsed = parse(data)
    assert str(parsed["Subject"]) == cleaned(subject)
    assert display_name(data, "To") == cleaned(name)
    assert parsed["To"].addresses[0].addr_spec == READER
    assert display_name(data, "From") == cleaned(from_name)
    assert parsed["From"].addresses[0].addr_spec == "worldview@news.example.com"
    assert [parsed[field].defects for field in ("Subject", "To", "From")] == [(), (), ()]
    assert_wire_headers(data)


@PROPERTY
@given(title=TEXT, name=TEXT, from_name=SETTING_TEXT)
def test_any_title_and_names_survive_the_column_headers(var_dir, title, name, from_name):
    settings = config(var_dir, from_name=from_name)

    data = column_mail(settings, title=title, name=name)

    assert_round_trip(data, subject=title, name=name, from_name=from_name)
    # The default List-Id phrase is the sender's name (RFC 2919).
    assert display_name(data, "List-Id") == cleaned(from_name)
    assert raw_value(data, "List-Unsubscribe").startswith(f"<{UNSUBSCRIBE}>")


@PROPERTY
@given(subject=TEXT, name=TEXT, from_name=SETTING_TEXT)
def test_any_subject_and_names_survive_the_transactional_headers(var_dir, subject, name, from_name):
    settings = config(var_dir, from_name=from_name)

    data = transactional_mail(settings, subject=subject, name=name)

    assert_round_trip(data, subject=subject, name=name, from_name=from_name)

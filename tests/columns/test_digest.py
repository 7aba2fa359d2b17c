"""The weekly digest's mail: what a reader's mail program shows of their week of columns, byte
for byte and decoded; and the "Manage preferences" link in the column and the digest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as html_module
import re
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.columns import sources, store
from service.columns.digest import (
    EXCERPT_BYTES,
    first_paragraph,
    period,
    prepare_digest,
    render_digest,
    trim,
)
from service.columns.mail import ColumnTooLarge, PreparedMail
from service.columns.model import Block, ParsedColumn, Section
from service.columns.view import ColumnView, column_view
from service.config import Settings
from service.db import transaction
from service.mail import dkim as signing
from service.mail.dkim import DkimSigner
from service.models import Subscriber
from service.tokens import Purpose, TokenError, tokens_for
from tests.columns.test_mail import (
    PREFERENCES,
    READERS,
    UNSUBSCRIBE,
    body_lines,
    decoded,
    flat,
    parse,
    parts,
    personal,
    raw_header_line,
    reader,
    settings_for,
)
from tests.conftest import ROOT, SEED
from tests.daily import add_readers, run_job
from tests.mail.test_dkim import DOMAIN, published_dns, verifies
from tests.smtp_server import SmtpTestServer

WEB = "https://news.example.com/columns/"

MONDAY = """---
title: Markets Brace for a Long Winter
date: 2016-02-01
byline: Reuters
---
## Oil falls again

*Traders on the floor in Vienna (Reuters)*

Oil *fell* again on Monday, as [OPEC](https://opec.example/) met in Vienna & traders
waited for **news**.

Analysts expect no cut before March.

## Gold rises

Gold rose for a third day.
"""

TUESDAY = """---
title: 東京で首脳会談、北朝鮮のミサイル発射を非難
date: 2016-02-02
byline: 共同通信
---
## 北朝鮮が再びミサイルを発射

日米韓の首脳は火曜日、東京で会談し、北朝鮮による弾道ミサイルの発射を強く非難した。

二つ目の段落。

## 中国は自制を呼びかけ

中国外務省の報道官は、すべての当事者に自制を求めた。
"""

WEDNESDAY = """---
title: "العالم اليوم: هدنة هشة في حلب 🕊️"
date: 2016-02-03
headlines: ["هدنة هشة في حلب 🕊️", "Markets 📉 slide as oil falls 🛢️ 👩‍💻"]
---
## هدنة هشة في حلب 🕊️

صمدت الهدنة في حلب ليلة الثلاثاء رغم تبادل متقطع لإطلاق النار.

## Markets 📉 slide as oil falls 🛢️ 👩‍💻

Stocks slid again.
"""

# Each column as the digest must show it: date, title, long date, headlines, opening paragraph.
WEEK = {
    dt.date(2016, 2, 1): (
        "Markets Brace for a Long Winter",
        "Monday, 1 February 2016",
        ["Oil falls again", "Gold rises"],
        "Oil fell again on Monday, as OPEC (https://opec.example/) met in Vienna & traders "
        "waited for news.",
    ),
    dt.date(2016, 2, 2): (
        "東京で首脳会談、北朝鮮のミサイル発射を非難",
        "Tuesday, 2 February 2016",
        ["北朝鮮が再びミサイルを発射", "中国は自制を呼びかけ"],
        "日米韓の首脳は火曜日、東京で会談し、北朝鮮による弾道ミサイルの発射を強く非難した。",
    ),
    dt.date(2016, 2, 3): (
        "العالم اليوم: هدنة هشة في حلب 🕊️",
        "Wednesday, 3 February 2016",
        ["هدنة هشة في حلب 🕊️", "Markets 📉 slide as oil falls 🛢️ 👩‍💻"],
        "صمدت الهدنة في حلب ليلة الثلاثاء رغم تبادل متقطع لإطلاق النار.",
    ),
    dt.date(2016, 2, 4): (
        "Syria Peace Talks Collapse as Russia Carpet Bombs Opposition in Aleppo",
        "Thursday, 4 February 2016",
        [
            "Syria peace talks collapse as Russia carpet bombs opposition in Aleppo",
            "John Kerry warns of ISIS expansion in Syria",
        ],
        "The Syria \u201cpeace talks\u201d being held in Geneva collapsed on Wednesday, as the "
        "opposition walked out because Russian warplanes were saturation bombing opposition "
        "fighters in Aleppo, after Russia had promised to stop bombing altogether as a "
        "precondition to the talks.",
    ),
    dt.date(2016, 2, 5): (
        "Ceasefire Talks Resume in Geneva",
        "Friday, 5 February 2016",
        ["Talks resume", "What comes next"],
        "Talks resumed on Friday after a two-week pause.",
    ),
}


@pytest.fixture
def week(engine: Engine) -> list[ColumnView]:
    """Five columns of one week, imported and stored as an editor would, read back as the
    views the digest is made of (handed over out of order)."""
    example = ROOT / "tests" / "columns" / "data" / "2024-03-01-example.md"
    imports: list[tuple[str, sources.Format, dt.date | None]] = [
        (SEED.read_text(encoding="utf-8"), "worldview", dt.date(2016, 2, 4)),
        (example.read_text(encoding="utf-8"), "markdown", dt.date(2016, 2, 5)),
        (MONDAY, "markdown", None),
        (WEDNESDAY, "markdown", None),
        (TUESDAY, "markdown", None),
    ]
    with transaction(engine) as session:
        views = []
        for text, fmt, date in imports:
            outcome = sources.import_text(session, text, fmt=fmt, date=date, name="column")
            record = store.column_for(session, outcome.date)
            assert record is not None
            views.append(column_view(record))
    return views


@pytest.fixture
def mail_settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


def html_text(html: str) -> str:
    """The HTML part as a reader sees it: tags dropped, entities decoded, spaces folded."""
    return flat(html_module.unescape(re.sub(r"<[^>]+>", " ", html)))


# What the digest shows


def test_both_parts_show_every_columns_title_date_headlines_opening_and_link(
    week: list[ColumnView], settings: Settings
) -> None:
    text, html = decoded(prepare_digest(week, settings).message_bytes(**reader()))

    shown = html_text(html)
    for view in week:
        title, long_date, headlines, opening = WEEK[view.date]
        for body in (flat(text), shown):
            for expected in (title, long_date, *headlines, opening):
                assert expected in body, (view.date, expected)
        assert f"Read the full column:\n{WEB}{view.slug}\n" in text
        assert f'<a href="{WEB}{view.slug}"' in html
        assert f'<a href="{WEB}{view.slug}#section-2"' in html  # its second headline
    assert f"All columns:\n{WEB.rstrip('/')}\n" in text


def test_columns_appear_oldest_first_in_both_parts(
    week: list[ColumnView], settings: Settings
) -> None:
    text, html = decoded(prepare_digest(week, settings).message_bytes(**reader()))

    for body in (flat(text), html_text(html)):
        positions = [body.index(WEEK[day][1]) for day in sorted(WEEK)]
        assert positions == sorted(positions)


def test_the_opening_paragraph_loses_its_markup_in_text_and_is_escaped_in_html(
    week: list[ColumnView], settings: Settings
) -> None:
    text, html = decoded(prepare_digest(week, settings).message_bytes(**reader()))

    assert "OPEC (https://opec.example/) met in Vienna & traders" in flat(text)
    assert "*fell*" not in text and "**news**" not in text
    assert "OPEC (https://opec.example/) met in Vienna &amp; traders" in flat(html)
    assert "<em>fell</em>" not in html and "<strong>" not in html
    assert "Traders on the floor" not in text  # a caption is not the opening paragraph


def test_both_parts_carry_the_readers_own_links_and_greeting(
    week: list[ColumnView], settings: Settings
) -> None:
    text, html = decoded(prepare_digest(week, settings).message_bytes(**reader()))

    assert "Hello Ada," in text and "Hello Ada," in html
    assert f"Manage preferences:\n{PREFERENCES}\n\nUnsubscribe:\n{UNSUBSCRIBE}\n" in text
    assert re.search(rf'<a href="{re.escape(PREFERENCES)}"[^>]*>Manage preferences</a>', html)
    assert re.search(rf'<a href="{re.escape(UNSUBSCRIBE)}"[^>]*>Unsubscribe</a>', html)
    assert "You receive the weekly World View digest because\nada@example.org\n" in text


def test_headers_name_the_week_and_say_it_is_a_digest(
    week: list[ColumnView], settings: Settings
) -> None:
    data = prepare_digest(week, settings).message_bytes(**reader())
    message = parse(data)

    assert message["Subject"] == "World View \u2014 your week: 1\u20135 February 2016"
    assert raw_header_line(data, "Subject").startswith("Subject: =?utf-8?")
    assert message["Feedback-ID"] == "2016-02-05:digest:world-view:news.example.com"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "World View <world-view.news.example.com>"
    assert message.get_content_type() == "multipart/alternative"
    assert all(len(line) <= 76 for line in body_lines(data))
    assert b"\n" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("first", "last", "written"),
    [
        (dt.date(2026, 11, 27), dt.date(2026, 11, 27), "27 November 2026"),
        (dt.date(2026, 11, 23), dt.date(2026, 11, 27), "23\u201327 November 2026"),
        (dt.date(2026, 11, 30), dt.date(2026, 12, 4), "30 November \u2013 4 December 2026"),
        (dt.date(2026, 12, 28), dt.date(2027, 1, 1), "28 December 2026 \u2013 1 January 2027"),
    ],
    ids=["one-day", "one-month", "two-months", "two-years"],
)
def test_the_subject_names_the_weeks_dates(
    mail_settings: Settings, first: dt.date, last: dt.date, written: str
) -> None:
    views = [column_on(first), column_on(last)] if first != last else [column_on(first)]

    data = prepare_digest(views, mail_settings).message_bytes(**reader())

    assert period(first, last) == written
    assert parse(data)["Subject"] == f"World View \u2014 your week: {written}"
    text, html = decoded(data)
    assert f"Your week: {written}" in text and f"Your week: {written}" in html


@pytest.mark.parametrize("name", ["世界の見方", "رؤية العالم", "World View 🌍"])
def test_a_sender_name_in_any_script_survives_in_the_subject(tmp_path: Path, name: str) -> None:
    settings = settings_for(tmp_path, from_name=name)

    data = prepare_digest([column_on(dt.date(2026, 11, 27))], settings).message_bytes(**reader())

    assert parse(data)["Subject"] == f"{name} \u2014 your week: 27 November 2026"
    assert parse(data)["From"].addresses[0].display_name == name
    assert all(len(line) <= 78 for line in raw_header_line(data, "Subject").split("\r\n"))


# The splice, the wire and the signature


@pytest.mark.parametrize("values", READERS.values(), ids=READERS.keys())
def test_spliced_digest_equals_a_direct_render_with_the_real_values(
    week: list[ColumnView], settings: Settings, values: dict[str, Any]
) -> None:
    data = prepare_digest(week, settings).message_bytes(**values)

    assert decoded(data) == render_digest(week, settings, **personal(values))
    assert all(len(line) <= 76 for line in body_lines(data))


def test_stuffed_digest_is_the_message_as_data_carries_it(
    week: list[ColumnView], settings: Settings
) -> None:
    prepared = prepare_digest(week, settings)

    wire = prepared.stuffed(**READERS["long-values-force-soft-breaks"])

    assert wire.message() == prepared.message_bytes(**READERS["long-values-force-soft-breaks"])


def test_a_dkim_signed_digest_verifies_with_rsa_and_ed25519(
    week: list[ColumnView], settings: Settings
) -> None:
    rsa, ed = signing.new_key("rsa"), signing.new_key("ed25519")
    signer = DkimSigner(
        DOMAIN,
        [signing._Key(b"s2026", b"rsa-sha256", rsa), signing._Key(b"e2026", b"ed25519-sha256", ed)],
    )
    dns = published_dns(rsa, ed)
    prepared = prepare_digest(week, settings)

    message = prepared.message_bytes(**reader(name="Zoë 王"), signer=signer)
    wire = prepared.stuffed(**reader(name="Zoë 王"), signer=signer)

    assert verifies(message, dns) == [True, True]
    assert dkim.verify(wire.message(), dnsfunc=dns)
    at = message.index(b"Oil", message.index(b"\r\n\r\n"))
    assert verifies(message[:at] + b"B" + message[at + 1 :], dns) == [False, False]


# Size and bounds


LONG_WORDS = {
    "latin": "negotiations ",
    "cjk": "交渉",
    "arabic": "مفاوضات ",
    "emoji": "🕊️👩‍💻🇸🇾",
}


@pytest.mark.parametrize("script", LONG_WORDS)
def test_seven_very_long_columns_stay_under_gmails_clipping_size(
    mail_settings: Settings, script: str
) -> None:
    views = [long_column(dt.date(2026, 11, 23) + dt.timedelta(days=i), script) for i in range(7)]

    prepared = prepare_digest(views, mail_settings)
    data = prepared.message_bytes(**READERS["long-values-force-soft-breaks"])

    _, html_part = parts(data)
    assert len(str(html_part.get_payload(decode=False)).encode()) < 100_000
    text, html = decoded(data)
    opening = first_paragraph(views[0])
    excerpt = re.search(r"\n\n((?:(?!\n\n).)+)\n\nRead the full column:", text, re.S)
    assert excerpt is not None and excerpt.group(1).endswith("\u2026")
    shown = flat(excerpt.group(1))[:-1]
    assert shown in html
    assert opening.startswith(shown) and len(shown) < len(opening)
    assert len(shown.encode()) <= EXCERPT_BYTES
    if script in ("latin", "arabic"):
        assert opening[len(shown)] == " "  # cut at a word boundary


def test_a_digest_that_cannot_fit_is_refused(mail_settings: Settings) -> None:
    # Links cannot be shortened: seven columns whose addresses alone pass the limit.
    views = [
        dataclasses.replace(column_on(dt.date(2026, 11, 23 + i)), slug="x" * 8000) for i in range(7)
    ]

    with pytest.raises(ColumnTooLarge):
        prepare_digest(views, mail_settings)


@pytest.mark.parametrize("count", [0, 8])
def test_no_column_or_more_than_seven_is_refused(mail_settings: Settings, count: int) -> None:
    views = [column_on(dt.date(2026, 11, 1) + dt.timedelta(days=i)) for i in range(count)]

    with pytest.raises(ValueError, match="1 to 7 columns"):
        prepare_digest(views, mail_settings)


def test_seven_columns_are_enough(mail_settings: Settings) -> None:
    views = [column_on(dt.date(2026, 11, 23) + dt.timedelta(days=i)) for i in range(7)]

    assert isinstance(prepare_digest(views, mail_settings), PreparedMail)


# The opening paragraph and trimming


def test_a_feed_column_opens_with_the_first_paragraph_of_its_html() -> None:
    text = "First paragraph of the entry.\n\nSecond one."
    block = Block("html", text, "<p>First paragraph of the entry.</p><p>Second one.</p>")
    view = view_of(ParsedColumn(title="Feed", sections=[Section("", [block])]))

    assert first_paragraph(view) == "First paragraph of the entry."


def test_a_column_whose_first_section_has_only_a_caption_opens_with_the_next_paragraph() -> None:
    sections = [
        Section("One", [Block("caption", "A photo", "A photo")]),
        Section("Two", [Block("paragraph", "The\nreal  opening.", "The real opening.")]),
    ]

    assert first_paragraph(view_of(ParsedColumn(title="T", sections=sections))) == (
        "The real opening."
    )


def test_a_column_without_text_shows_no_opening(mail_settings: Settings) -> None:
    view = view_of(ParsedColumn(title="Only a title"))

    text, html = decoded(prepare_digest([view], mail_settings).message_bytes(**reader()))

    assert first_paragraph(view) == ""
    assert "Only a title" in text and "Only a title" in html


@pytest.mark.parametrize(
    ("text", "limit", "trimmed"),
    [
        ("short enough", 40, "short enough"),
        ("one two three four five", 16, "one two three\u2026"),
        ("ends a sentence. Then more words", 20, "ends a sentence\u2026"),
        ("漢字" * 20, 15, "漢字漢字\u2026"),
        ("ok 👩‍💻👩‍💻", 17, "ok 👩‍💻\u2026"),
        ("👩‍💻👩‍💻", 19, "👩‍💻\u2026"),
        ("🇸🇾🇩🇪🇫🇷", 15, "🇸🇾\u2026"),
        ("cafe\u0301\u0301s", 8, "caf\u2026"),
    ],
    ids=["fits", "words", "punctuation", "cjk", "emoji", "zwj-emoji", "flags", "combining"],
)
def test_trimming_stops_at_a_word_or_a_whole_character(text: str, limit: int, trimmed: str) -> None:
    assert trim(text, limit) == trimmed
    assert len(trim(text, limit).encode()) <= limit


# "Manage preferences" in the column, as delivered


def test_the_delivered_column_links_to_the_readers_own_preferences(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=1)
    run_job(engine, settings)
    [mail] = smtp_server.wait_for(1)
    with Session(engine) as session:
        reader_id = session.exec(select(Subscriber.id)).one()

    text, html = decoded(mail.data)

    link = re.search(r"\nManage preferences:\n(\S+)\n", text)
    assert link is not None
    url = link.group(1)
    assert re.search(rf'<a href="{re.escape(url)}"[^>]*>Manage preferences</a>', html)
    assert url.startswith("https://news.example.com/preferences/")
    token = url.rsplit("/", 1)[1]
    tokens = tokens_for(settings)
    assert tokens.read(Purpose.preferences, token) == str(reader_id)
    with pytest.raises(TokenError):
        tokens.read(Purpose.unsubscribe, token)
    unsubscribe = parse(mail.data)["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    assert token.split(".")[1] == unsubscribe.split(".")[1]  # the same expiry


# Columns made for the tests above


def view_of(parsed: ParsedColumn, day: dt.date = dt.date(2026, 11, 27)) -> ColumnView:
    return ColumnView.from_parsed(parsed, slug=store.slug_for(day, parsed.title), date=day)


def column_on(day: dt.date) -> ColumnView:
    opening = Block("paragraph", f"The news of {day}.", f"The news of {day}.")
    parsed = ParsedColumn(title=f"Column of {day}", sections=[Section("News", [opening])])
    return view_of(parsed, day)


def long_column(day: dt.date, script: str) -> ColumnView:
    """A column as long as any: a 500-character title, 20 long headlines, 40 long sections."""
    word = LONG_WORDS[script]
    text = (word * 2000).strip()
    headlines = [f"{i} {text[:500]}" for i in range(20)]
    sections = [Section(h, [Block("paragraph", text, text)] * 3) for h in headlines * 2]
    parsed = ParsedColumn(title=text[:500], headlines=headlines, sections=sections)
    return view_of(parsed, day)

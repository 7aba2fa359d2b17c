"""The column e-mail: what a reader's mail program receives, byte for byte and decoded."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import html as html_module
import importlib.util
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from service.columns.mail import (
    ColumnTooLarge,
    Personal,
    PreparedColumn,
    prepare_column,
    render_column,
)
from service.columns.model import Block, ParsedColumn, Section
from service.columns.view import ColumnView, column_view
from service.config import TEMPLATES_DIR, Settings
from service.models import ColumnRecord
from tests.conftest import ROOT, make_settings

SEED = ROOT / "seeds" / "world-view-2016-02-04.txt"
UNSUBSCRIBE = "https://news.example.com/unsubscribe/tok-ada-123"
FEEDBACK = "https://news.example.com/feedback?t=fb-ada&c=2016-02-04"
PREFERENCES = "https://news.example.com/preferences/pref-ada-456"
LONG_TOKEN = "T" * 120 + "-" + "a1B2c3D4e5" * 8  # 201 characters, URL-safe
PARAGRAPHS = [
    "The Syria \u201cpeace talks\u201d being held in Geneva collapsed on Wednesday, as the "
    "opposition walked out because Russian warplanes were saturation bombing opposition "
    "fighters in Aleppo, after Russia had promised to stop bombing altogether.",
    "A week ago I pointed out that the preceding attempts at \u201cpeace talks\u201d were a "
    "cover; see https://www.generationaldynamics.com/pg/ww2010.my_story.htm?x=1&y=2 for more.",
    "Syrian regime troops backed by Russian warplanes are now poised to recapture Aleppo from "
    "the opposition rebels. This will be a major victory against the opposition forces.",
    "U.S. Secretary of State John F. Kerry said Tuesday that ISIS is creating a new stronghold "
    "in oil-rich Libya:",
    "\u201cAs everybody here knows, that country has resources,\u201d Kerry said at a conference "
    "of 23 foreign ministers.",
    "Kerry on Tuesday ruled out military intervention in Libya by the United States in the "
    "near future.",
]


def paragraph(text: str) -> Block:
    return Block("paragraph", text, text.replace("&", "&amp;"))


def seed_like_column(
    title: str = "World View: Syria Peace Talks Collapse in Aleppo",
) -> ParsedColumn:
    headlines = [
        "Syria peace talks collapse as Russia carpet bombs opposition in Aleppo",
        "John Kerry warns of ISIS expansion in Syria",
    ]
    caption = "U.N. mediator Staffan de Mistura announcing a \u2018pause\u2019 in talks (Reuters)"
    return ParsedColumn(
        title=title,
        byline="The Associated Press",
        headlines=headlines,
        sections=[
            Section(
                headlines[0],
                [Block("caption", caption, caption)] + [paragraph(p) for p in PARAGRAPHS[:3]],
            ),
            Section(
                headlines[1],
                [Block("caption", "Kerry in Rome", "Kerry in <em>Rome</em>")]
                + [paragraph(p) for p in PARAGRAPHS[3:]],
            ),
        ],
        keys=[
            "Generational Dynamics",
            "Syria",
            "John Kerry",
            "Russia",
            "Sergei Lavrov",
            "Staffan de Mistura",
            "Libya",
        ],
        permalink="https://www.generationaldynamics.com/pg/xct.gd.e160204.htm",
        date=dt.date(2016, 2, 4),
    )


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return make_settings("sqlite:///" + str(tmp_path / "x.db"), tmp_path / "var", **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture
def view() -> ColumnView:
    return ColumnView.from_parsed(seed_like_column(), slug="2016-02-04-syria")


@pytest.fixture
def prepared(view: ColumnView, settings: Settings) -> PreparedColumn:
    return prepare_column(view, settings, templates_dir=TEMPLATES_DIR)


def reader(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "to": "ada@example.org",
        "name": "Ada",
        "unsubscribe_url": UNSUBSCRIBE,
        "feedback_url": FEEDBACK,
        "preferences_url": PREFERENCES,
        "message_id": "<wv.2016-02-04.42@news.example.com>",
        "date_header": "Thu, 04 Feb 2016 06:00:00 +0000",
    }
    values.update(overrides)
    return values


def personal(values: dict[str, Any]) -> Personal:
    """A reader's values as the slow reference render takes them."""
    return {
        "name": values["name"],
        "email": values["to"],
        "unsubscribe_url": values["unsubscribe_url"],
        "feedback_url": values["feedback_url"],
        "preferences_url": values["preferences_url"],
    }


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(data: bytes) -> tuple[EmailMessage, EmailMessage]:
    text, html = parse(data).iter_parts()
    return text, html  # type: ignore[return-value]


def decoded(data: bytes) -> tuple[str, str]:
    text, html = parts(data)
    return crlf_to_lf(text.get_content()), crlf_to_lf(html.get_content())


def crlf_to_lf(body: str) -> str:
    """The parser keeps the wire's CRLF in decoded text; the templates speak LF."""
    return body.replace("\r\n", "\n")


def header_block(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[0].decode("ascii")


def raw_header_line(data: bytes, name: str) -> str:
    """The header as written on the wire, continuation lines included."""
    match = re.search(rf"^{name}:.*?(?=\r\n\S)", header_block(data) + "\r\nX", re.M | re.S)
    assert match, f"no {name} header"
    return match.group(0)


def flat(text: str) -> str:
    return " ".join(text.split())


def body_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")


# The message as a whole


def test_message_is_text_then_html_alternatives_in_utf8_quoted_printable(prepared):
    message = parse(prepared.message_bytes(**reader()))

    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    for part in (text, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"


def test_every_line_ends_in_crlf_and_fits_the_line_limits(prepared):
    data = prepared.message_bytes(
        **reader(name="Zoë " + "Ångström-" * 12, unsubscribe_url=f"{UNSUBSCRIBE}/{LONG_TOKEN}")
    )

    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert all(len(line) <= 76 for line in body_lines(data))
    header_block(data)  # decodes as ASCII


def test_headers_name_the_sender_the_reader_and_the_list(prepared):
    data = prepared.message_bytes(**reader(name="Ada Lovelace"))
    message = parse(data)

    assert message["From"].addresses[0].display_name == "World View"
    assert message["From"].addresses[0].addr_spec == "worldview@news.example.com"
    assert message["To"].addresses[0].display_name == "Ada Lovelace"
    assert message["To"].addresses[0].addr_spec == "ada@example.org"
    assert message["Subject"] == "World View: Syria Peace Talks Collapse in Aleppo"
    assert message["Date"].datetime == dt.datetime(2016, 2, 4, 6, 0, tzinfo=dt.UTC)
    assert message["Message-ID"] == "<wv.2016-02-04.42@news.example.com>"
    assert message["List-Id"] == "World View <world-view.news.example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Feedback-ID"] == "2016-02-04:column:world-view:news.example.com"
    assert message["MIME-Version"] == "1.0"
    for absent in ("Return-Path", "Bcc", "Reply-To"):
        assert absent not in message


def test_reply_to_is_written_only_when_configured(view, tmp_path):
    settings = settings_for(tmp_path, reply_to="letters@news.example.com")

    message = parse(prepare_column(view, settings).message_bytes(**reader()))

    assert message["Reply-To"] == "letters@news.example.com"


def test_reader_without_name_gets_the_bare_address_and_a_generic_greeting(prepared):
    data = prepared.message_bytes(**reader(name=""))
    text, html = decoded(data)

    assert parse(data)["To"] == "ada@example.org"
    assert "\nHello,\n" in text
    assert "Hello," in html
    assert "Hello ," not in text + html


def test_date_defaults_to_now(prepared):
    values = reader()
    del values["date_header"]

    sent = parse(prepared.message_bytes(**values))["Date"].datetime

    assert abs(sent - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    "name",
    ["Zoë Ångström", "Łukasz Żółkiewski-Brzęczyszczykiewicz von Großherzogtum"],
    ids=["short", "longer-than-one-encoded-word"],
)
def test_non_ascii_title_and_name_are_encoded_and_decode_back(view, settings, name):
    title = "Café talks — Genève: " + "the long pause " * 4
    view = dataclasses.replace(view, content=dataclasses.replace(view.content, title=title))
    prepared = prepare_column(view, settings)

    data = prepared.message_bytes(**reader(name=name))
    message = parse(data)

    assert "=?utf-8?" in raw_header_line(data, "Subject")
    assert message["Subject"] == view.title.strip()
    # Python's address parser keeps the space between two encoded-words that RFC 2047 6.2
    # says to drop; the words are split at a space, so only the spacing can differ.
    assert flat(message["To"].addresses[0].display_name) == name
    assert "=?utf-8?" in raw_header_line(data, "To")
    assert all(
        len(line) <= 78
        for line in header_block(data).split("\r\n")
        if not line.startswith("List-Unsubscribe:")
    )
    text, html = decoded(data)
    assert f"Hello {name}," in text
    assert f"Hello {name}," in html


def test_non_ascii_sender_name_is_encoded(view, tmp_path):
    settings = settings_for(tmp_path, from_name="Vue du Monde — Genève")

    data = prepare_column(view, settings).message_bytes(**reader())

    assert "=?utf-8?" in raw_header_line(data, "From")
    assert parse(data)["From"].addresses[0].display_name == "Vue du Monde — Genève"


# One-click unsubscribe (RFC 8058)


MAILTO = "unsubscribe+1-abcdefghijklmnop@bounces.news.example.com"


def test_list_unsubscribe_carries_the_https_url_then_the_mailto(prepared):
    data = prepared.message_bytes(
        **reader(unsubscribe_url="https://n.ex/1"), unsubscribe_mailto="u@n.ex"
    )

    line = raw_header_line(data, "List-Unsubscribe")
    assert line == "List-Unsubscribe: <https://n.ex/1>, <mailto:u@n.ex?subject=unsubscribe>"


def test_without_a_receiver_list_unsubscribe_offers_only_https(prepared):
    data = prepared.message_bytes(**reader())

    assert raw_header_line(data, "List-Unsubscribe") == f"List-Unsubscribe: <{UNSUBSCRIBE}>"


def test_a_list_unsubscribe_over_78_characters_is_folded_between_the_uris(prepared):
    data = prepared.message_bytes(**reader(), unsubscribe_mailto=MAILTO)

    line = raw_header_line(data, "List-Unsubscribe")
    assert line == f"List-Unsubscribe: <{UNSUBSCRIBE}>,\r\n <mailto:{MAILTO}?subject=unsubscribe>"


def test_list_unsubscribe_keeps_a_200_character_token_whole_and_unencoded(prepared):
    url = f"https://news.example.com/unsubscribe/{LONG_TOKEN}"

    data = prepared.message_bytes(**reader(unsubscribe_url=url), unsubscribe_mailto=MAILTO)

    line = raw_header_line(data, "List-Unsubscribe")
    first, second = line.split("\r\n")
    assert first == f"List-Unsubscribe: <{url}>,"
    assert second == f" <mailto:{MAILTO}?subject=unsubscribe>"
    assert "=?" not in line
    assert parse(data)["List-Unsubscribe"].startswith(f"<{url}>,")


# The reader's values in the bodies


def test_both_parts_show_the_readers_name_address_and_links(prepared):
    text, html = decoded(prepared.message_bytes(**reader(name="Ada Lovelace")))

    for body in (text, html):
        assert "Hello Ada Lovelace," in body
        assert "ada@example.org" in body
    assert UNSUBSCRIBE in text
    assert FEEDBACK in text
    assert f'href="{UNSUBSCRIBE}"' in html
    assert f'href="{FEEDBACK.replace("&", "&amp;")}"' in html


def test_markup_in_a_name_is_escaped_in_the_html_part(prepared):
    text, html = decoded(prepared.message_bytes(**reader(name="<script>alert(1)</script>")))

    assert "<script>" not in html
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt;," in html
    assert "Hello <script>alert(1)</script>," in text


READERS = {
    "plain": reader(),
    "no-name": reader(name=""),
    "specials": reader(name='O\'Brien & "Sons" <ltd>\u00a0Co', to="o'brien+a&b@example.org"),
    "non-ascii": reader(name="Zoë Ångström — Genève"),
    "long-values-force-soft-breaks": reader(
        name="Bartholomew " + "Montgomery-Fitzwilliam " * 5 + "Ø",
        to="bartholomew.montgomery-fitzwilliam.the-third@subscribers.example.org",
        unsubscribe_url=f"https://news.example.com/unsubscribe/{LONG_TOKEN}",
        feedback_url=f"https://news.example.com/feedback?token={LONG_TOKEN}&column=2016-02-04",
        preferences_url=f"https://news.example.com/preferences/{LONG_TOKEN}",
    ),
}


@pytest.mark.parametrize("values", READERS.values(), ids=READERS.keys())
def test_spliced_parts_equal_a_direct_render_with_the_real_values(prepared, view, settings, values):
    data = prepared.message_bytes(**values)

    assert decoded(data) == render_column(view, settings, **personal(values))
    assert all(len(line) <= 76 for line in body_lines(data))


def test_long_values_are_soft_broken_next_to_the_splice_points(prepared):
    data = prepared.message_bytes(**READERS["long-values-force-soft-breaks"])

    soft_broken = [line for line in body_lines(data) if line.endswith(b"=")]
    assert any(b"Montgomery" in line for line in soft_broken)
    assert any(b"TTTT" in line for line in soft_broken)


def test_two_readers_get_their_own_links_and_otherwise_the_same_column(prepared):
    ada = reader()
    bob = reader(
        to="bob@example.net",
        name="Bob",
        unsubscribe_url=UNSUBSCRIBE + "-bob",
        feedback_url=FEEDBACK + "-bob",
        preferences_url=PREFERENCES + "-bob",
        message_id="<wv.2016-02-04.43@news.example.com>",
    )

    ada_data, bob_data = prepared.message_bytes(**ada), prepared.message_bytes(**bob)

    assert parse(ada_data)["List-Unsubscribe"] != parse(bob_data)["List-Unsubscribe"]
    assert parse(ada_data).get_boundary() == parse(bob_data).get_boundary()
    ada_bodies, bob_bodies = decoded(ada_data), decoded(bob_data)
    assert ada_bodies != bob_bodies
    assert [without_reader(body, ada) for body in ada_bodies] == [
        without_reader(body, bob) for body in bob_bodies
    ]


def without_reader(body: str, values: dict[str, Any]) -> str:
    """The body with the reader's own values (plain or HTML-escaped) blanked out."""
    for key in ("unsubscribe_url", "feedback_url", "preferences_url", "to", "name"):
        body = body.replace(values[key], "READER").replace(
            html_module.escape(values[key]), "READER"
        )
    return body


def test_the_boundary_appears_only_where_it_delimits_the_parts(prepared):
    data = prepared.message_bytes(**READERS["specials"])

    boundary = parse(data).get_boundary().encode()
    assert data.count(boundary) == 4  # Content-Type, two part delimiters, the closing one
    assert data.count(b"\r\n--" + boundary + b"\r\n") == 2
    assert data.endswith(b"\r\n--" + boundary + b"--\r\n")


def test_unsafe_header_values_are_refused(prepared):
    with pytest.raises(ValueError):
        prepared.message_bytes(**reader(to="ada@example.org\r\nBcc: eve@example.net"))
    with pytest.raises(ValueError):
        prepared.message_bytes(**reader(unsubscribe_url="https://n.example/u/1> <https://evil"))
    with pytest.raises(ValueError):
        prepared.message_bytes(**reader(message_id="<a@b>\r\nBcc: eve@example.net"))


def test_line_breaks_in_a_name_cannot_reach_the_headers(prepared):
    data = prepared.message_bytes(**reader(name="Ada\r\nBcc: eve@example.net"))

    assert "Bcc" not in parse(data)
    assert parse(data)["To"].addresses[0].display_name == "Ada Bcc: eve@example.net"


# The column's content and design


def test_css_is_inlined_and_only_the_phone_rules_stay_in_a_style_block(prepared):
    _, html = decoded(prepared.message_bytes(**reader()))

    assert re.search(r'<h1 style="[^"]*font-size: 28px', html)
    assert re.search(r'<p class="paragraph" style="[^"]*line-height: 1\.65', html)
    assert re.search(r'<p class="caption" style="[^"]*font-style: italic', html)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert styles and all(s.strip().startswith("@media") for s in styles)
    assert "max-width: 600px" in html
    assert 'role="presentation"' in html
    assert "<img" not in html and "@import" not in html and "@font-face" not in html


def test_html_part_stays_under_gmails_clipping_size(prepared):
    _, html = parts(prepared.message_bytes(**READERS["long-values-force-soft-breaks"]))

    assert len(html.get_payload(decode=False).encode()) < 100_000


def test_a_column_too_large_for_gmail_is_refused(view, settings):
    many = [paragraph(" ".join(PARAGRAPHS))] * 120
    huge = dataclasses.replace(
        view, content=dataclasses.replace(view.content, sections=[Section("Everything", many)])
    )

    with pytest.raises(ColumnTooLarge):
        prepare_column(huge, settings)


def test_the_column_reads_in_order_in_both_parts(prepared):
    text, html = decoded(prepared.message_bytes(**reader()))

    column = seed_like_column()
    for body in (text, html):
        assert "Thursday, 4 February 2016" in body
        assert "The Associated Press" in body
        position = body.index("Hello Ada,")
        for later in [*(s.heading for s in column.sections), "KEYS:", "Libya", "Unsubscribe"]:
            position = body.index(later, position)
    assert "This morning's key headlines:" in text
    assert "  * Syria peace talks collapse as Russia carpet bombs opposition in\n    Aleppo" in text
    assert "  * John Kerry warns of ISIS expansion in Syria\n" in text
    assert "This morning’s key headlines" in html


def test_text_part_has_underlined_headings_bracketed_captions_and_72_columns(prepared):
    text, _ = decoded(prepared.message_bytes(**reader()))
    lines = text.split("\n")

    heading = lines.index("John Kerry warns of ISIS expansion in Syria")
    assert lines[heading + 1] == "-" * len(lines[heading])
    assert "[Kerry in Rome]" in text
    assert "KEYS: Generational Dynamics, Syria, John Kerry, Russia, Sergei Lavrov," in lines
    url = "https://www.generationaldynamics.com/pg/ww2010.my_story.htm?x=1&y=2"
    assert any(url in line for line in lines)  # never broken, even past 72 columns
    assert all(len(line) <= 72 or " " not in line.strip() or url in line for line in lines)


def test_html_part_carries_sections_captions_and_headline_links(prepared, view):
    _, html = decoded(prepared.message_bytes(**reader()))

    assert '<h2 id="section-1"' in html and '<h2 id="section-2"' in html
    assert 'href="https://news.example.com/columns/2016-02-04-syria#section-2"' in html
    assert "Kerry in <em>Rome</em>" in html
    assert "saturation bombing" in html
    assert "?x=1&amp;y=2" in html


def test_footer_links_are_in_both_parts(prepared):
    text, html = decoded(prepared.message_bytes(**reader()))

    web = "https://news.example.com/columns/2016-02-04-syria"
    permalink = "https://www.generationaldynamics.com/pg/xct.gd.e160204.htm"
    text_lines = text.split("\n")
    for url in (web, permalink, "https://news.example.com/", UNSUBSCRIBE, FEEDBACK, PREFERENCES):
        assert url in text_lines  # a full URL on a line of its own
    assert f"Manage preferences:\n{PREFERENCES}\n\nUnsubscribe:\n{UNSUBSCRIBE}\n" in text
    assert "World View, 1 Example Street, Example City" in text
    for link, label in [
        (permalink, "Permanent link to this column"),
        (web, "View in your browser"),
        (FEEDBACK.replace("&", "&amp;"), "Having issues? Let us know"),
        (PREFERENCES, "Manage preferences"),
        (UNSUBSCRIBE, "Unsubscribe"),
        ("https://news.example.com/", "Receive daily World View columns by e-mail"),
    ]:
        assert re.search(rf'<a href="{re.escape(link)}"[^>]*>{re.escape(label)}', html), label
    assert "World View, 1 Example Street, Example City" in html
    assert re.search(r'class="preheader"[^>]*>Syria peace talks collapse', html)


# The view


def test_column_view_of_a_stored_record_matches_the_parsed_column():
    parsed = seed_like_column()
    record = ColumnRecord(
        date=dt.date(2016, 2, 4),
        slug="2016-02-04-syria",
        title=parsed.title,
        byline=parsed.byline,
        headlines=parsed.headlines,
        sections=parsed.sections_json(),
        keys=parsed.keys,
        permalink=None,
        source_text="",
        source_format="worldview",
        content_hash="x",
    )

    view = column_view(record, base_url="https://news.example.com")

    assert view.sections == parsed.sections
    assert view.web_url == "https://news.example.com/columns/2016-02-04-syria"
    assert view.permalink_or_web == view.web_url
    assert view.long_date == "Thursday, 4 February 2016"
    assert view.headline_links == [
        (parsed.headlines[0], "section-1"),
        (parsed.headlines[1], "section-2"),
    ]


# With the real parser on the seed column


def test_every_paragraph_of_the_seed_reaches_both_parts(settings):
    if importlib.util.find_spec("service.columns.parse") is None:
        pytest.skip("service.columns.parse is not written yet")
    from service.columns.parse import parse_worldview

    source = SEED.read_text(encoding="utf-8")
    parsed = parse_worldview(source)
    view = ColumnView.from_parsed(parsed, slug="2016-02-04", date=dt.date(2016, 2, 4))
    text, html = decoded(prepare_column(view, settings).message_bytes(**reader()))

    html_text = html_module.unescape(re.sub(r"<[^>]+>", "", html))
    paragraphs = [line for line in source.splitlines() if len(line) > 100]
    assert len(paragraphs) >= 12
    for p in paragraphs:
        assert quotes_alike(flat(p)) in quotes_alike(flat(text))
        assert quotes_alike(flat(p)) in quotes_alike(flat(html_text))


def quotes_alike(text: str) -> str:
    """The seed repeats its photo caption with straight quotes as the image's alt text."""
    return text.translate(str.maketrans("‘’“”", "''\"\""))

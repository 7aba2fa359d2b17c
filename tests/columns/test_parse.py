"""The World View text parser: the seed's structure, odd input, and properties of any input."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.columns.model import ParsedColumn
from service.columns.parse import ColumnFormatError, parse_worldview
from tests.conftest import SEED

SEED_TEXT = SEED.read_text(encoding="utf-8")
BOILERPLATE = (
    "Permanent web link to this article",
    "Receive daily World View columns by e-mail",
    "Please let us know if you're having issues with commenting.",
)
FAST = settings(max_examples=200, deadline=None)


def blocks(parsed: ParsedColumn, kind: str) -> list[str]:
    return [b.text for s in parsed.sections for b in s.blocks if b.kind == kind]


def test_seed_parses_into_two_headlines_two_sections_seven_keys() -> None:
    parsed = parse_worldview(SEED_TEXT)

    assert parsed.title == "Syria Peace Talks Collapse as Russia Carpet Bombs Opposition in Aleppo"
    assert parsed.byline == "The Associated Press"
    assert parsed.headlines == [
        "Syria peace talks collapse as Russia carpet bombs opposition in Aleppo",
        "John Kerry warns of ISIS expansion in Syria",
    ]
    assert [s.heading for s in parsed.sections] == parsed.headlines
    assert parsed.keys == [
        "Generational Dynamics",
        "Syria",
        "John Kerry",
        "Russia",
        "Sergei Lavrov",
        "Staffan de Mistura",
        "Libya",
    ]
    assert parsed.date is None
    assert parsed.source_format == "worldview"


def test_seed_first_section_has_one_caption_kept_with_curly_quotes() -> None:
    first, second = parse_worldview(SEED_TEXT).sections

    captions = [b for b in first.blocks if b.kind == "caption"]
    assert len(captions) == 1
    assert captions[0].text == (
        "U.N. mediator Staffan de Mistura at Wednesday news conference announcing a "
        "‘pause’ in peace talks (Reuters)"
    )
    assert first.blocks[0] is captions[0]
    assert not [b for b in second.blocks if b.kind == "caption"]


def test_every_paragraph_line_of_the_seed_is_a_paragraph_verbatim() -> None:
    parsed = parse_worldview(SEED_TEXT)
    lines = [line.strip() for line in SEED_TEXT.splitlines() if line.strip()]
    caption_copies = [line for line in lines if line.startswith("U.N. mediator")]
    structure = {"World View: " + parsed.title, parsed.byline, *parsed.headlines, *caption_copies}
    expected = [
        line
        for line in lines
        if line not in structure
        and line not in BOILERPLATE
        and not line.startswith(("This morning", "•", "KEYS:"))
    ]

    assert len(caption_copies) == 2
    assert len(expected) == 13  # nine paragraphs in the first section, four in the second
    assert blocks(parsed, "paragraph") == expected


def test_seed_drops_site_boilerplate_from_the_body() -> None:
    parsed = parse_worldview(SEED_TEXT)
    text = " ".join(b.text for s in parsed.sections for b in s.blocks)

    for phrase in ("Permanent web link", "Receive daily", "issues with commenting", "KEYS"):
        assert phrase not in text
    assert parsed.permalink is None


def test_paragraph_html_is_escaped_inline_text() -> None:
    parsed = parse_worldview('Title\n\nA <b>bold</b> & "quoted" claim.\n')

    block = parsed.sections[0].blocks[0]
    assert block.html == "A &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; claim."
    assert "<p>" not in block.html


@pytest.mark.parametrize(
    "tail",
    [
        "Permanent web link to this article https://example.com/wv/2016-02-04\n",
        "Permanent web link to this article\nhttps://example.com/wv/2016-02-04\n",
        "PERMANENT WEB LINK TO THIS ARTICLE:\n\n<https://example.com/wv/2016-02-04>\n",
    ],
)
def test_permalink_is_picked_up_from_the_same_or_next_line(tail: str) -> None:
    text = (
        "World View: T\n\nBody text here.\n\n"
        + tail
        + "receive DAILY world view columns by email!\n"
    )

    parsed = parse_worldview(text)

    assert parsed.permalink == "https://example.com/wv/2016-02-04"
    assert blocks(parsed, "paragraph") == ["Body text here."]


def test_boilerplate_matches_loosely() -> None:
    text = "T\n\nBody.\n\nPlease let us know if you’re having issues with commenting\n"

    assert blocks(parse_worldview(text), "paragraph") == ["Body."]


def test_a_sentence_starting_like_the_link_line_stays_a_paragraph() -> None:
    line = "Permanent web link to this article was broken yesterday."

    assert blocks(parse_worldview("T\n\n" + line), "paragraph") == [line]


def test_crlf_and_cr_input_parse_like_lf() -> None:
    crlf = parse_worldview(SEED_TEXT.replace("\n", "\r\n"))
    cr = parse_worldview(SEED_TEXT.replace("\n", "\r"))

    assert crlf == parse_worldview(SEED_TEXT)
    assert cr == crlf


def test_control_characters_are_stripped() -> None:
    parsed = parse_worldview("Ti\x00tle\x07\n\nBo\x1bdy\x7f text.\x0c\n")

    assert parsed.title == "Title"
    assert blocks(parsed, "paragraph") == ["Body text."]


def test_headings_match_headlines_ignoring_case_space_and_quotes() -> None:
    text = (
        "World View: Title\n\nThis morning's key headlines\n"
        "* Kerry’s   “plan” fails\n- Second story\n\n"
        'Lead text.\n\nKERRY\'S "PLAN" FAILS\n\nOne.\n\nsecond story\n\nTwo.\n'
    )

    parsed = parse_worldview(text)

    assert parsed.headlines == ["Kerry’s   “plan” fails", "Second story"]
    assert [s.heading for s in parsed.sections] == ["", 'KERRY\'S "PLAN" FAILS', "second story"]
    assert [[b.text for b in s.blocks] for s in parsed.sections] == [
        ["Lead text."],
        ["One."],
        ["Two."],
    ]


def test_repeated_sentence_with_final_period_is_not_a_caption() -> None:
    text = "T\n\nHe left.\nHe left.\n"

    parsed = parse_worldview(text)

    assert blocks(parsed, "caption") == []
    assert blocks(parsed, "paragraph") == ["He left. He left."]


def test_text_without_headlines_is_one_untitled_section() -> None:
    parsed = parse_worldview("Just a line that is a title\n\nFirst.\n\nSecond.\n")

    assert parsed.headlines == []
    assert [(s.heading, [b.text for b in s.blocks]) for s in parsed.sections] == [
        ("", ["First.", "Second."])
    ]


def test_empty_title_after_prefix_becomes_untitled_column() -> None:
    assert parse_worldview("World View:\n\nBody.").title == "Untitled column"


@pytest.mark.parametrize("text", ["", "   ", "\n\r\n\t\n", "\x00\x01"])
def test_no_text_at_all_raises_column_format_error(text: str) -> None:
    with pytest.raises(ColumnFormatError):
        parse_worldview(text)


def test_column_format_error_is_a_value_error() -> None:
    assert issubclass(ColumnFormatError, ValueError)


# --- properties -----------------------------------------------------------------------

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


def _output_words(parsed: ParsedColumn) -> set[str]:
    parts = [parsed.title, parsed.byline, *parsed.headlines, *parsed.keys, parsed.permalink or ""]
    for section in parsed.sections:
        parts.append(section.heading)
        parts.extend(block.text for block in section.blocks)
    return _words("\n".join(parts))


def _expected_words(text: str, skipped: set[str]) -> set[str]:
    """Words of every line that is not boilerplate, minus the markers the format consumes."""
    lines = [
        line.strip()
        for line in _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    ]
    words: set[str] = set()
    first = True
    for line in lines:
        if not line or line in skipped:
            continue
        if first:
            line = re.sub(r"(?i)^world\s*view\s*:", "", line)
            first = False
        words |= _words(re.sub(r"(?i)^keys\s*:", "", line))
    return words


def _check_invariants(parsed: ParsedColumn) -> None:
    assert parsed.title.strip()
    for section in parsed.sections:
        for block in section.blocks:
            assert block.text.strip()
            assert block.kind in {"paragraph", "caption"}


@FAST
@given(st.text())
def test_any_text_parses_or_raises_only_column_format_error(text: str) -> None:
    try:
        parsed = parse_worldview(text)
    except ColumnFormatError:
        assert not _CONTROLS.sub("", text).strip()
        return
    _check_invariants(parsed)
    assert _expected_words(text, set()) <= _output_words(parsed)


_WORD = st.text(alphabet="abcdefgh‘’“”'\"", min_size=1, max_size=6)
_PHRASE = st.lists(_WORD, min_size=1, max_size=6).map(" ".join)
_SENTENCE = _PHRASE.map(lambda p: p + ".")
_CAPTION = _PHRASE.map(lambda p: p + " (Reuters)").map(lambda c: c + "\n" + c.replace("'", "’"))


def _worldview_like(draw: st.DrawFn) -> tuple[str, set[str]]:
    headlines = draw(st.lists(_PHRASE, max_size=3))
    lines = [draw(st.sampled_from(["World View: ", ""])) + draw(_PHRASE), "", draw(_PHRASE), ""]
    if draw(st.booleans()) or headlines:
        lines += ["This morning’s key headlines from", ""]
        lines += [f"  {draw(st.sampled_from('•*-'))} {h}" for h in headlines]
    body = st.one_of(
        _SENTENCE,
        _CAPTION,
        st.sampled_from(headlines) if headlines else _PHRASE,
        st.sampled_from(BOILERPLATE),
        _PHRASE.map(lambda p: "KEYS: " + p.replace(" ", ", ")),
        st.text(max_size=40),
        st.just(""),
    )
    lines += draw(st.lists(body, max_size=25))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    marker_lines = {"This morning’s key headlines from"}
    return newline.join(lines), set(BOILERPLATE) | marker_lines


@FAST
@given(st.composite(_worldview_like)())
def test_worldview_like_text_keeps_every_word(case: tuple[str, set[str]]) -> None:
    text, skipped = case

    parsed = parse_worldview(text)

    _check_invariants(parsed)
    assert _expected_words(text, skipped) <= _output_words(parsed)

"""Markdown columns: front matter, sections and blocks, and hostile input rendered harmless."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.columns.markdown import parse_markdown
from service.columns.model import ParsedColumn
from service.columns.parse import ColumnFormatError

DATA = Path(__file__).parent / "data"


def all_html(parsed: ParsedColumn) -> str:
    return "\n".join(b.html for s in parsed.sections for b in s.blocks)


def test_example_column_front_matter_and_sections() -> None:
    parsed = parse_markdown((DATA / "2024-03-01-example.md").read_text(encoding="utf-8"))

    assert parsed.title == "Ceasefire Talks Resume in Geneva"
    assert parsed.date == dt.date(2024, 3, 1)
    assert parsed.byline == "The Associated Press"
    assert parsed.permalink == "https://example.com/world-view/2024-03-01"
    assert parsed.keys == ["Geneva", "Syria", "United Nations"]
    assert parsed.headlines == ["Talks resume", "What comes next"]
    assert [s.heading for s in parsed.sections] == ["Talks resume", "What comes next"]
    assert parsed.source_format == "markdown"


def test_example_column_blocks_keep_order_and_kind() -> None:
    parsed = parse_markdown((DATA / "2024-03-01-example.md").read_text(encoding="utf-8"))
    first, second = parsed.sections

    assert [b.kind for b in first.blocks] == ["caption", "paragraph", "paragraph", "html"]
    assert first.blocks[0].text == "Delegates arrive at the Palais des Nations (Reuters)"
    assert first.blocks[1].text == "Talks resumed on Friday after a two-week pause."
    assert first.blocks[2].text == (
        "The envoy said the pause was over (see the statement (https://example.com/statement))."
    )
    assert first.blocks[2].html == (
        "The envoy said the <strong>pause</strong> was over (see "
        '<a href="https://example.com/statement">the statement</a>).'
    )
    assert first.blocks[3].text == "- Russia\n- Iran\n- Turkey"
    assert first.blocks[3].html.startswith("<ul>")
    assert [b.kind for b in second.blocks] == ["paragraph", "html"]
    assert second.blocks[1].text == "> Nothing is agreed until everything is agreed."


def test_paragraph_html_is_inline_without_p_wrapper() -> None:
    parsed = parse_markdown("---\ntitle: T\n---\nSome *emphasis* here.\n")

    block = parsed.sections[0].blocks[0]
    assert (block.kind, block.text, block.html) == (
        "paragraph",
        "Some emphasis here.",
        "Some <em>emphasis</em> here.",
    )


def test_link_plain_text_shows_the_url() -> None:
    parsed = parse_markdown("See [the report](https://example.com/r) and <https://example.com>.")

    assert parsed.sections[0].blocks[0].text == (
        "See the report (https://example.com/r) and https://example.com."
    )


def test_content_before_the_first_heading_goes_to_an_unnamed_section() -> None:
    parsed = parse_markdown("---\ntitle: T\n---\nLead.\n\n## One\n\nBody.\n")

    assert [(s.heading, [b.text for b in s.blocks]) for s in parsed.sections] == [
        ("", ["Lead."]),
        ("One", ["Body."]),
    ]


def test_title_falls_back_to_first_h1_which_is_not_a_section() -> None:
    parsed = parse_markdown("# The Title\n\nIntro.\n\n# Part one\n\nText.\n")

    assert parsed.title == "The Title"
    assert [s.heading for s in parsed.sections] == ["", "Part one"]
    assert parsed.headlines == ["Part one"]


def test_h1_repeating_the_front_matter_title_is_not_a_section() -> None:
    parsed = parse_markdown("---\ntitle: The Title\n---\n# The title\n\n## A\n\nx\n")

    assert [s.heading for s in parsed.sections] == ["A"]


def test_no_title_anywhere_is_untitled_column() -> None:
    assert parse_markdown("Just text.").title == "Untitled column"


def test_keys_as_comma_separated_string_and_date_as_string() -> None:
    parsed = parse_markdown("---\ntitle: T\ndate: '2024-03-01'\nkeys: ' a , b,, c '\n---\nx")

    assert parsed.keys == ["a", "b", "c"]
    assert parsed.date == dt.date(2024, 3, 1)


@pytest.mark.parametrize(
    "permalink", ["javascript:alert(1)", "ftp://example.com/x", "example.com/x", "https://"]
)
def test_permalink_other_than_http_is_ignored(permalink: str) -> None:
    parsed = parse_markdown(f"---\ntitle: T\npermalink: '{permalink}'\n---\nx")

    assert parsed.permalink is None


def test_script_tags_are_escaped_not_rendered() -> None:
    text = "---\ntitle: T\n---\n<script>alert(1)</script>\n\nHi <script>x()</script>\n\n" + (
        "- <script>y()</script>\n"
    )

    html = all_html(parse_markdown(text))

    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_javascript_link_is_not_rendered_as_a_link() -> None:
    html = all_html(parse_markdown("[click](javascript:alert(1)) ![x](javascript:alert(2))"))

    assert "<a " not in html
    assert "<img" not in html
    assert "javascript:alert(1)" not in html.replace("[click](javascript:alert(1))", "")


def test_image_only_paragraph_keeps_the_image_and_captions_its_alt_text() -> None:
    parsed = parse_markdown("## Photo\n\n![Kerry in Rome (AP)](https://example.com/k.jpg)\n")

    image, caption = parsed.sections[0].blocks
    assert image.kind == "html"
    assert '<img src="https://example.com/k.jpg" alt="Kerry in Rome (AP)" />' in image.html
    assert (caption.kind, caption.text) == ("caption", "Kerry in Rome (AP)")


def test_emphasis_paragraph_later_in_a_section_is_a_paragraph() -> None:
    parsed = parse_markdown("## S\n\nFirst.\n\n*Not a caption.*\n")

    assert [b.kind for b in parsed.sections[0].blocks] == ["paragraph", "paragraph"]


def test_code_block_and_table_become_html_blocks() -> None:
    parsed = parse_markdown("```\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")

    code, table = parsed.sections[0].blocks
    assert (code.kind, code.text) == ("html", "print(1)")
    assert code.html.startswith("<pre><code>")
    assert (table.kind, table.text) == ("html", "a | b\n1 | 2")
    assert table.html.startswith("<table>")


def test_nested_lists_read_as_indented_plain_text() -> None:
    parsed = parse_markdown("3. one\n4. two\n   - inner\n")

    assert parsed.sections[0].blocks[0].text == "3. one\n4. two\n   - inner"


@pytest.mark.parametrize(
    "front",
    [
        "title: [unclosed",
        "title: x\n  bad: indent",
        "- just\n- a list",
        "date: 2024-13-45x",
        "date: 'yesterday'",
        "keys: {a: 1}",
        "title: {nested: map}",
    ],
)
def test_bad_front_matter_raises_column_format_error_with_reason(front: str) -> None:
    with pytest.raises(ColumnFormatError) as caught:
        parse_markdown(f"---\n{front}\n---\nBody.\n")

    assert caught.value.reason
    assert "\n" not in caught.value.reason


def test_leading_thematic_break_without_closing_is_just_markdown() -> None:
    parsed = parse_markdown("---\nHello there.\n")

    assert parsed.sections[0].blocks[-1].text == "Hello there."


@pytest.mark.parametrize("text", ["", "  \n\n", "\x00"])
def test_empty_markdown_raises_column_format_error(text: str) -> None:
    with pytest.raises(ColumnFormatError):
        parse_markdown(text)


_MD_PIECES = st.sampled_from(
    [
        "# ",
        "## ",
        "### ",
        "---\n",
        "- ",
        "1. ",
        "> ",
        "```\n",
        "    ",
        "*",
        "_",
        "**",
        "[a](",
        "](javascript:alert(1))",
        "![i](",
        "<script>",
        "</script>",
        "<img src=x onerror=alert(1)>",
        "| a | b |\n|---|---|\n",
        "title: x\n",
        "date: 2024-01-01\n",
        ":",
        "\n",
        "\n\n",
        "\r\n",
        "\x00",
        "&amp;",
        "`",
        "\\",
    ]
)
_MARKDOWNISH = st.lists(st.one_of(_MD_PIECES, st.text(max_size=10)), max_size=40).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), _MARKDOWNISH))
def test_odd_markdown_never_crashes_and_never_renders_script(text: str) -> None:
    try:
        parsed = parse_markdown(text)
    except ColumnFormatError as exc:
        assert exc.reason
        return

    assert parsed.title.strip()
    html = all_html(parsed).lower()
    assert "<script" not in html
    assert 'href="javascript' not in html
    assert 'src="javascript' not in html
    assert "<img src=x" not in html  # the raw tag, as opposed to its escaped text
    for section in parsed.sections:
        for block in section.blocks:
            assert block.text.strip()

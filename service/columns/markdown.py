"""Parse a Markdown column with a YAML front-matter block into a ParsedColumn."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, cast
from urllib.parse import urlsplit

import yaml
from frontmatter.default_handlers import YAMLHandler
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token

from .model import Block, ParsedColumn, Section
from .parse import UNTITLED, ColumnFormatError, clean_text, heading_key

# Raw HTML off: a column's "<script>" comes out as text, and markdown-it's own link check
# refuses javascript:, vbscript:, file: and data: URLs.
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")
_RENDERER = cast(RendererHTML, _MD.renderer)
_YAML = YAMLHandler()
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SECTION_TAGS = ("h1", "h2")


@dataclass
class _FrontMatter:
    title: str | None = None
    date: dt.date | None = None
    permalink: str | None = None
    keys: list[str] = field(default_factory=list)
    byline: str = ""
    headlines: list[str] | None = None


def parse_markdown(text: str) -> ParsedColumn:
    """Parse a Markdown column; broken front matter raises ColumnFormatError."""
    text = clean_text(text)
    if not text.strip():
        raise ColumnFormatError("no text")
    meta, body = _split_front_matter(text)
    tokens = _MD.parse(body)
    title_at = _title_heading_at(tokens, meta.title)
    sections = _Walker(tokens, skip=title_at).sections()
    title = meta.title or (_inline_text(tokens[title_at + 1]) if title_at is not None else "")
    headings = [section.heading for section in sections if section.heading]
    return ParsedColumn(
        title=title or UNTITLED,
        byline=meta.byline,
        headlines=meta.headlines if meta.headlines is not None else headings,
        sections=sections,
        keys=meta.keys,
        permalink=meta.permalink,
        date=meta.date,
        source_format="markdown",
    )


def _split_front_matter(text: str) -> tuple[_FrontMatter, str]:
    """The front matter (empty when there is none) and the Markdown body after it."""
    stripped = text.lstrip()
    if not _YAML.detect(stripped):
        return _FrontMatter(), text
    try:
        raw, body = _YAML.split(stripped)
    except ValueError:  # an opening "---" with no closing one: a thematic break, not metadata
        return _FrontMatter(), text
    try:
        data = _YAML.load(raw)
    except yaml.YAMLError as exc:
        raise ColumnFormatError("invalid front matter: " + " ".join(str(exc).split())) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ColumnFormatError("invalid front matter: expected 'key: value' lines")
    return _front_matter(data), body


def _front_matter(data: dict[Any, Any]) -> _FrontMatter:
    headlines = data.get("headlines")
    return _FrontMatter(
        title=_scalar_text(data.get("title"), "title") or None,
        date=_front_matter_date(data.get("date")),
        permalink=_web_url(data.get("permalink")),
        keys=_text_list(data.get("keys"), "keys"),
        byline=_scalar_text(data.get("byline"), "byline"),
        headlines=None if headlines is None else _text_list(headlines, "headlines"),
    )


def _scalar_text(value: object, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float | dt.date):
        return " ".join(str(value).split())
    raise ColumnFormatError(f"front matter {name} must be text")


def _text_list(value: object, name: str) -> list[str]:
    """A YAML list, or a comma-separated string; blanks and repeats dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        items: Sequence[object] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ColumnFormatError(f"front matter {name} must be a list or comma-separated text")
    out: list[str] = []
    for item in items:
        text = _scalar_text(item, name)
        if text and text not in out:
            out.append(text)
    return out


def _front_matter_date(value: object) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _ISO_DATE.match(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ColumnFormatError(f"front matter date {value!r} is not a YYYY-MM-DD date")


def _web_url(value: object) -> str | None:
    """Only absolute http(s) URLs; anything else is ignored rather than linked."""
    if not isinstance(value, str) or any(ch.isspace() for ch in value.strip()):
        return None
    parts = urlsplit(value.strip())
    return value.strip() if parts.scheme in {"http", "https"} and parts.netloc else None


def _title_heading_at(tokens: list[Token], title: str | None) -> int | None:
    """Index of the `# ` heading that is the title (the first one, unless its text differs)."""
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.level == 0 and token.tag == "h1":
            text = _inline_text(tokens[i + 1])
            if title is None or heading_key(text) == heading_key(title):
                return i
            return None
    return None


class _Walker:
    """Turns the top-level token stream into sections of blocks."""

    def __init__(self, tokens: list[Token], *, skip: int | None) -> None:
        self.tokens = tokens
        self.skip = skip
        self.parts = [Section(heading="")]

    def sections(self) -> list[Section]:
        i = 0
        while i < len(self.tokens):
            end = _block_end(self.tokens, i)
            if i != self.skip:
                self._take(self.tokens[i:end])
            i = end
        # Text before the first heading is kept, but an empty lead section is noise.
        return self.parts if self.parts[0].blocks else self.parts[1:]

    def _take(self, chunk: list[Token]) -> None:
        first = chunk[0]
        if first.type == "heading_open" and first.tag in SECTION_TAGS:
            self.parts.append(Section(heading=_inline_text(chunk[1])))
        elif first.type == "paragraph_open":
            self._paragraph(chunk[1])
        else:
            self._add(Block(kind="html", text=_block_text(chunk), html=_render(chunk)))

    def _paragraph(self, inline: Token) -> None:
        children = inline.children or []
        image = _only_image(children)
        if image is not None:
            src = image.attrGet("src") or ""
            self._add(Block(kind="html", text=f"[image: {src}]", html=_render_paragraph(inline)))
            alt = _inline_text(image)
            self._add(_caption(alt, escape(alt)))
            return
        text = _inline_text(inline)
        html = _RENDERER.renderInline(children, _MD.options, {})
        current = self.parts[-1]
        if current.heading and not current.blocks and _all_emphasis(children):
            self._add(_caption(text, html))
        else:
            self._add(Block(kind="paragraph", text=text, html=html))

    def _add(self, block: Block | None) -> None:
        if block is not None and block.text.strip():
            self.parts[-1].blocks.append(block)


def _caption(text: str, html: str) -> Block | None:
    return Block(kind="caption", text=text, html=html) if text else None


def _block_end(tokens: list[Token], start: int) -> int:
    """Index just after the top-level block that starts at `start`."""
    if tokens[start].nesting != 1:
        return start + 1
    depth = 0
    for i in range(start, len(tokens)):
        depth += tokens[i].nesting
        if depth == 0:
            return i + 1
    return len(tokens)


def _render(chunk: list[Token]) -> str:
    return _MD.renderer.render(chunk, _MD.options, {}).strip()


def _render_paragraph(inline: Token) -> str:
    return "<p>" + _RENDERER.renderInline(inline.children or [], _MD.options, {}) + "</p>"


def _only_image(children: list[Token]) -> Token | None:
    images = [c for c in children if c.type == "image"]
    rest = [c for c in children if c.type != "image" and (c.type != "text" or c.content.strip())]
    return images[0] if len(images) == 1 and not rest else None


def _all_emphasis(children: list[Token]) -> bool:
    """True for `*A caption*`: the whole paragraph inside one emphasis."""
    return (
        len(children) >= 3
        and children[0].type in {"em_open", "strong_open"}
        and children[-1].type in {"em_close", "strong_close"}
        and sum(c.type == children[0].type for c in children) == 1
    )


def _inline_text(inline: Token) -> str:
    """Plain text of an inline token: emphasis dropped, links as "text (url)"."""
    out: list[str] = []
    links: list[tuple[int, str]] = []
    for child in inline.children or []:
        if child.type in {"text", "code_inline", "html_inline"}:
            out.append(child.content)
        elif child.type == "softbreak":
            out.append(" ")
        elif child.type == "hardbreak":
            out.append("\n")
        elif child.type == "image":
            out.append(_inline_text(child))
        elif child.type == "link_open":
            links.append((len(out), str(child.attrGet("href") or "")))
        elif child.type == "link_close" and links:
            start, href = links.pop()
            label = "".join(out[start:]).strip()
            if href and href not in {label, f"mailto:{label}"}:
                out.append(f" ({href})" if label else href)
    return "".join(out).strip()


def _block_text(chunk: list[Token]) -> str:
    """A readable plain-text form of a list, quote, code block, table or minor heading."""
    plain = _PlainBlock()
    for token in chunk:
        plain.feed(token)
    return "\n".join(plain.lines).strip()


class _PlainBlock:
    """Plain text for nested blocks: "- " and "1. " for list items, "> " for quotes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.prefix: list[str] = []
        self.numbers: list[int | None] = []  # None for a bullet list
        self.marker = ""
        self.cells: list[str] | None = None

    def feed(self, token: Token) -> None:
        kind = token.type
        if kind in {"bullet_list_open", "ordered_list_open"}:
            start = token.attrGet("start") if kind == "ordered_list_open" else None
            self.numbers.append(None if kind == "bullet_list_open" else int(str(start or 1)))
        elif kind in {"bullet_list_close", "ordered_list_close"}:
            self.numbers.pop()
        elif kind == "list_item_open":
            self.marker = self._next_marker()
            self.prefix.append(" " * len(self.marker))
        elif kind == "blockquote_open":
            self.prefix.append("> ")
        elif kind in {"list_item_close", "blockquote_close"}:
            self.prefix.pop()
        elif kind == "tr_open":
            self.cells = []
        elif kind == "tr_close" and self.cells is not None:
            self.lines.append(" | ".join(self.cells))
            self.cells = None
        elif kind == "inline" and self.cells is not None:
            self.cells.append(_inline_text(token))
        elif kind in {"inline", "fence", "code_block"}:
            self._text(_inline_text(token) if kind == "inline" else token.content.rstrip("\n"))
        elif kind == "hr":
            self.lines.append("* * *")

    def _next_marker(self) -> str:
        number = self.numbers[-1] if self.numbers else None
        if number is None:
            return "- "
        self.numbers[-1] = number + 1
        return f"{number}. "

    def _text(self, text: str) -> None:
        indent = "".join(self.prefix)
        first = "".join(self.prefix[:-1]) + self.marker if self.marker else indent
        self.marker = ""
        for n, line in enumerate(text.split("\n")):
            self.lines.append((first if n == 0 else indent) + line)

"""The parsed column: the one shape of a column's content, shared by the parsers, storage and
rendering, with the converter from a stored row."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..models import ColumnRecord

BlockKind = Literal["paragraph", "caption", "html"]


@dataclass
class Block:
    """One block of a section.

    `text` is the plain-text form (for the text/plain part). `html` is safe HTML: for
    paragraphs and captions the *inline* content (the template wraps it in <p>/<figcaption>),
    for kind "html" a whole block (a Markdown list or quote) rendered by the library.
    """

    kind: BlockKind
    text: str
    html: str


@dataclass
class Section:
    """One section of a column: its heading and its blocks."""

    heading: str  # "" for text before the first heading
    blocks: list[Block] = field(default_factory=list)


@dataclass
class ParsedColumn:
    """A column's content as the parsers produce it and the templates show it."""

    title: str
    byline: str = ""
    headlines: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    permalink: str | None = None
    date: dt.date | None = None
    source_format: Literal["worldview", "markdown", "feed"] = "worldview"

    def sections_json(self) -> list[dict[str, Any]]:
        """The sections in the JSON form the columns table stores."""
        return [asdict(section) for section in self.sections]


def sections_from_json(data: list[dict[str, Any]]) -> list[Section]:
    """Sections from their stored JSON form (the inverse of `sections_json`)."""
    return [
        Section(heading=s.get("heading", ""), blocks=[Block(**b) for b in s.get("blocks", [])])
        for s in data
    ]


def content_of(record: ColumnRecord) -> ParsedColumn:
    """The content of a stored column, in the shape the parsers produce."""
    return ParsedColumn(
        title=record.title,
        byline=record.byline,
        headlines=list(record.headlines),
        sections=sections_from_json(record.sections),
        keys=list(record.keys),
        permalink=record.permalink,
        date=record.date,
        source_format=record.source_format,  # type: ignore[arg-type]
    )

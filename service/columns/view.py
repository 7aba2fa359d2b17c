"""A column as pages and mail show it: its parsed content, where it lives, and the derived
bits both need (long date, anchors, links), the same for the web page and the mail."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from sqlmodel import Session

from ..models import ColumnRecord
from . import store
from .model import ParsedColumn, Section, content_of

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True)
class ColumnView:
    """A column's content (one shape: the parsed column) with its slug and base URL.

    `base_url` "" gives site-relative links (fine for web pages); the mail always uses the
    configured absolute base URL.
    """

    content: ParsedColumn
    slug: str
    base_url: str = ""

    @classmethod
    def from_parsed(
        cls, parsed: ParsedColumn, *, slug: str, date: dt.date | None = None, base_url: str = ""
    ) -> ColumnView:
        """A view of a freshly parsed column (date from the argument or the parser)."""
        when = date or parsed.date
        if when is None:
            raise ValueError("the column has no date")
        return cls(dataclasses.replace(parsed, date=when), slug=slug, base_url=base_url)

    def at(self, base_url: str) -> ColumnView:
        """The same column with links under `base_url`."""
        return dataclasses.replace(self, base_url=base_url)

    @property
    def title(self) -> str:
        """The column's title."""
        return self.content.title

    @property
    def date(self) -> dt.date:
        """The column's date."""
        assert self.content.date is not None, "a view always has a date (from_parsed checks)"
        return self.content.date

    @property
    def byline(self) -> str:
        """Who wrote it (may be empty)."""
        return self.content.byline

    @property
    def headlines(self) -> list[str]:
        """The day's key headlines."""
        return self.content.headlines

    @property
    def sections(self) -> list[Section]:
        """The column's sections, in order."""
        return self.content.sections

    @property
    def keys(self) -> list[str]:
        """The KEYS line's topics."""
        return self.content.keys

    @property
    def permalink(self) -> str | None:
        """The column's own web address elsewhere, if it has one."""
        return self.content.permalink

    @property
    def web_url(self) -> str:
        """The column's page here."""
        return f"{self.base_url}/columns/{self.slug}"

    @property
    def permalink_or_web(self) -> str:
        """Where the "view in browser" link points: the permalink, else our page."""
        return self.permalink or self.web_url

    @property
    def long_date(self) -> str:
        """E.g. "Thursday, 4 February 2016" (English whatever the process locale)."""
        return f"{_WEEKDAYS[self.date.weekday()]}, {written_date(self.date)}"

    @property
    def anchored_sections(self) -> list[tuple[str, Section]]:
        """Each section with its anchor (the id its heading gets in the mail and on the page)."""
        return [(section_anchor(i), s) for i, s in enumerate(self.sections, 1)]

    @property
    def headline_links(self) -> list[tuple[str, str]]:
        """Each headline with the anchor of the section of the same heading ("" if none)."""
        anchors = {_fold(s.heading): section_anchor(i) for i, s in enumerate(self.sections, 1)}
        return [(h, anchors.get(_fold(h), "")) for h in self.headlines]


def written_date(day: dt.date) -> str:
    """E.g. "4 February 2016" (English whatever the process locale)."""
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def section_anchor(index: int) -> str:
    """The id of the index-th section (1-based), the same in the mail and on the web page."""
    return f"section-{index}"


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def column_view(record: ColumnRecord, *, base_url: str = "") -> ColumnView:
    """A view of a stored column."""
    return ColumnView(content_of(record), slug=record.slug, base_url=base_url)


def latest_views(
    session: Session, limit: int, *, base_url: str = ""
) -> tuple[list[ColumnView], dt.datetime | None]:
    """The newest columns first, and when the newest change among them was made."""
    records = store.latest(session, limit)
    return [column_view(r, base_url=base_url) for r in records], store.last_change(records)


def view_by_slug(session: Session, slug: str, *, base_url: str = "") -> ColumnView | None:
    """The column at /columns/{slug}, if there is one."""
    record = store.column_by_slug(session, slug)
    return column_view(record, base_url=base_url) if record is not None else None

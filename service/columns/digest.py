"""The weekly digest: what it shows of each column of a reader's week (title, date, key
headlines, the opening paragraph, the link to the full column), mailed by the same splice
machinery as the daily column (mail.py), prepared once for everyone who gets those columns."""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

from ..config import TEMPLATES_DIR, Settings
from .mail import MailContent, Personal, PreparedMail, prepare_mail, render_reference
from .view import ColumnView, written_date

MAX_COLUMNS = 7  # a week of daily columns
# How much the digest shows of one column, in UTF-8 bytes: that is what Gmail's limit
# (mail.HTML_PART_LIMIT) counts, quoted-printable writing each non-ASCII byte as three
# characters, and it reads about as long in every script (a CJK character says about as much
# as a short word). With these, seven columns of any length take under 70 KB of HTML.
TITLE_BYTES = 300
HEADLINES_SHOWN = 5
HEADLINE_BYTES = 200
EXCERPT_BYTES = 480
PREHEADER_BYTES = 150
ELLIPSIS = "\u2026"


@dataclass(frozen=True)
class DigestEntry:
    """One column as the digest shows it: the HTML and text parts read the same fields."""

    title: str
    long_date: str  # "Monday, 23 November 2026"
    url: str  # the full column in the archive
    headlines: tuple[tuple[str, str], ...]  # each key headline with its link
    excerpt: str  # the opening paragraph as plain text, trimmed at a word boundary


@dataclass(frozen=True)
class Digest:
    """A reader's week of columns, oldest first."""

    entries: tuple[DigestEntry, ...]
    first: dt.date
    last: dt.date
    archive_url: str

    @property
    def period(self) -> str:
        """The dates it covers, e.g. "23–27 November 2026"."""
        return period(self.first, self.last)

    @property
    def preheader(self) -> str:
        """The line an inbox shows after the Subject: the columns' titles."""
        return trim(" \u00b7 ".join(entry.title for entry in self.entries), PREHEADER_BYTES)


def prepare_digest(
    views: Sequence[ColumnView], settings: Settings, *, templates_dir: Path = TEMPLATES_DIR
) -> PreparedMail:
    """The digest of `views` (1 to 7 columns, in any order) rendered, inlined and encoded once;
    `.stuffed(**ReaderValues)` or `.message_bytes(…)` per reader, as for the daily column.
    ValueError for no column or more than 7; ColumnTooLarge if Gmail would still clip it."""
    return prepare_mail(digest_content(views, settings), settings, templates_dir=templates_dir)


def render_digest(
    views: Sequence[ColumnView],
    settings: Settings,
    *,
    templates_dir: Path = TEMPLATES_DIR,
    **personal: Unpack[Personal],
) -> tuple[str, str]:
    """(text, html) for one reader, rendered the slow way; the spliced message must decode to it."""
    return render_reference(digest_content(views, settings), settings, personal, templates_dir)


def digest_content(views: Sequence[ColumnView], settings: Settings) -> MailContent:
    """The digest's mail: templates email/digest.*, a Subject naming the week, and the last
    column's date in the Feedback-ID."""
    digest = digest_of(views, base_url=settings.base_url)
    subject = f"{settings.from_name} \u2014 your week: {digest.period}"
    context = {"digest": digest, "subject": subject}
    return MailContent("digest", context, subject, f"{digest.last.isoformat()}:digest")


def digest_of(views: Sequence[ColumnView], *, base_url: str) -> Digest:
    """What the digest of `views` shows, oldest column first, links under `base_url`."""
    if not 1 <= len(views) <= MAX_COLUMNS:
        raise ValueError(f"a digest has 1 to {MAX_COLUMNS} columns, not {len(views)}")
    ordered = sorted((view.at(base_url) for view in views), key=lambda view: view.date)
    return Digest(
        entries=tuple(_entry(view) for view in ordered),
        first=ordered[0].date,
        last=ordered[-1].date,
        archive_url=f"{base_url}/columns",
    )


def _entry(view: ColumnView) -> DigestEntry:
    headlines = tuple(
        (trim(headline, HEADLINE_BYTES), f"{view.web_url}#{anchor}" if anchor else view.web_url)
        for headline, anchor in view.headline_links[:HEADLINES_SHOWN]
    )
    excerpt = trim(first_paragraph(view), EXCERPT_BYTES)
    title = trim(view.title, TITLE_BYTES)
    return DigestEntry(title, view.long_date, view.web_url, headlines, excerpt)


def first_paragraph(view: ColumnView) -> str:
    """The column's opening paragraph as plain text (a block's text form: no markup, links as
    "label (url)"): the first paragraph block, in the first section that has one. A column
    without one (a feed entry is a single HTML block) gives the first paragraph of its first
    block that is not a caption; "" if there is none."""
    blocks = [block for section in view.sections for block in section.blocks]
    for block in blocks:
        if block.kind == "paragraph" and block.text.strip():
            return " ".join(block.text.split())
    for block in blocks:
        if block.kind == "html" and block.text.strip():
            return " ".join(block.text.strip().split("\n\n", 1)[0].split())
    return ""


def trim(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` UTF-8 bytes: if longer, cut at the last space that
    fits (in a script without spaces, as late as fits) and ended with an ellipsis, never inside
    a character that combines with the one before it (an accent, an emoji sequence, a flag)."""
    text = " ".join(text.split())
    if len(text.encode()) <= limit:
        return text
    room = limit - len(ELLIPSIS.encode())
    cut = len(text.encode()[:room].decode("utf-8", "ignore"))  # whole characters that fit
    space = text.rfind(" ", 0, cut + 1)
    if space > cut // 2:  # a word boundary that keeps most of the room
        cut = space
    kept = text[: _cluster_start(text, cut)].rstrip(" ,;:.\u2013\u2014-")
    return kept + ELLIPSIS


# Characters that belong to the character before them: zero-width joiner, variation selectors,
# emoji skin tones; combining marks are found by their Unicode category.
_JOINER = "\u200d"
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


def _cluster_start(text: str, cut: int) -> int:
    """`cut` moved back to the start of the user-perceived character it falls in."""
    while cut > 0 and _continues(text, cut):
        cut -= 1
    indicators = 0  # flags are pairs of regional indicators: never keep half of one
    while indicators < cut and ord(text[cut - 1 - indicators]) in _REGIONAL_INDICATORS:
        indicators += 1
    return cut - indicators % 2


def _continues(text: str, at: int) -> bool:
    char = text[at]
    return (
        unicodedata.category(char) in {"Mn", "Me", "Mc"}
        or ord(char) in _SKIN_TONES
        or char == _JOINER
        or text[at - 1] == _JOINER
    )


def period(first: dt.date, last: dt.date) -> str:
    """The dates a digest covers: one day ("27 November 2026") or a range ("23–27 November
    2026", "30 November – 4 December 2026", "28 December 2026 – 1 January 2027")."""
    if first == last:
        return written_date(last)
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}\u2013{written_date(last)}"
    start = written_date(first)
    if first.year == last.year:
        start = start.rsplit(" ", 1)[0]
    return f"{start} \u2013 {written_date(last)}"

"""Bring columns in from files, folders, admin API text and an RSS/Atom feed: one per date."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
import re
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import feedparser
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ..clock import utcnow
from ..config import Settings
from ..mail.column import ColumnTooLarge, ColumnView, prepare_column
from ..models import ColumnRecord, Send
from .markdown import parse_markdown
from .model import Block, ParsedColumn, Section
from .parse import UNTITLED, ColumnFormatError, clean_text, parse_worldview

log = logging.getLogger(__name__)

MAX_COLUMN_BYTES = 1_000_000
MAX_FEED_BYTES = 5_000_000
FEED_TIMEOUT_SECONDS = 30.0
SLUG_MAX_CHARS = 80
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
COLUMN_SUFFIXES = MARKDOWN_SUFFIXES | {".txt"}
NO_DATE = "no date: put YYYY-MM-DD in the file name or front matter"
# Column limits from the table: PostgreSQL refuses longer strings outright.
TITLE_MAX, BYLINE_MAX, PERMALINK_MAX, NAME_MAX = 500, 500, 1000, 500

Action = Literal["created", "updated", "unchanged", "locked"]
Format = Literal["worldview", "markdown"]
# Raises ValueError (with a reason for the operator) for a column that cannot be stored.
ColumnCheck = Callable[[ParsedColumn], None]
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")


@dataclass(frozen=True)
class ImportOutcome:
    """What an import did to the column of one date."""

    column_id: int
    slug: str
    date: dt.date
    action: Action
    name: str = ""


class ColumnFileError(Exception):
    """A source that could not become a column; str() is "NAME: REASON" on one line."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = " ".join(name.split())
        self.reason = " ".join(reason.split())
        super().__init__(f"{self.name}: {self.reason}")


def slug_for(date: dt.date, title: str) -> str:
    """The column's URL name: "2016-02-04-syria-peace-talks-collapse"."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    # Apostrophes join ("Syria's" is "syrias"); other punctuation separates words.
    words = re.findall(r"[a-z0-9]+", ascii_title.lower().replace("'", ""))
    slug = f"{date.isoformat()}-" + ("-".join(words) or "column")
    if len(slug) <= SLUG_MAX_CHARS:
        return slug
    cut = slug[:SLUG_MAX_CHARS]
    # Cut at a word boundary unless that would leave only the date.
    return cut.rsplit("-", 1)[0] if cut.rfind("-") > len("YYYY-MM-DD") else cut


def date_from_name(name: str) -> dt.date | None:
    """The first valid YYYY-MM-DD in a file name."""
    for match in _DATE_IN_NAME.finditer(name):
        try:
            return dt.date(*(int(part) for part in match.groups()))
        except ValueError:
            continue
    return None


def read_column_file(path: Path) -> tuple[ParsedColumn, str]:
    """Parse one column file (Markdown by suffix, else World View text) and return its text."""
    text = _decode(str(path), _read_bytes(path, MAX_COLUMN_BYTES))
    fmt: Format = "markdown" if path.suffix.lower() in MARKDOWN_SUFFIXES else "worldview"
    parsed = _parse(text, fmt, str(path))
    parsed.date = parsed.date or date_from_name(path.name)
    if parsed.date is None:
        raise ColumnFileError(str(path), NO_DATE)
    return parsed, text


def mail_size_check(settings: Settings) -> ColumnCheck:
    """The check that a column can be mailed: rendered as a reader would get it, its HTML part
    must stay under Gmail's clipping limit (the unsubscribe link sits at the end)."""

    def check(parsed: ParsedColumn) -> None:
        assert parsed.date is not None
        view = ColumnView.from_parsed(parsed, slug=slug_for(parsed.date, parsed.title))
        try:
            prepare_column(view, settings)
        except ColumnTooLarge as exc:
            raise ValueError(f"too large to mail: {exc}; shorten the column") from exc

    return check


def store_column(
    session: Session,
    parsed: ParsedColumn,
    *,
    source_text: str,
    source_name: str,
    check: ColumnCheck | None = None,
) -> ImportOutcome:
    """Create or update the column of parsed.date; one that has started sending is kept.
    `check` runs on a new or changed column before it is stored (ColumnFileError if it fails)."""
    if parsed.date is None:
        raise ValueError("parsed.date must be set before storing a column")
    source_text = _storable(source_text)
    fields = _record_fields(parsed, source_text, _storable(source_name))
    # FOR UPDATE (PostgreSQL): a send starting now waits for us, or we see its Send row.
    statement = select(ColumnRecord).where(ColumnRecord.date == parsed.date).with_for_update()
    record = session.exec(statement).first()
    if record is None:
        _run_check(check, parsed, source_name)
        created = _insert_first(session, ColumnRecord(date=parsed.date, **fields))
        if created is not None:
            log.info("column created", extra={"date": str(parsed.date), "slug": created.slug})
            return _outcome(created, "created", source_name)
        # Another process created this date's column a moment ago: treat it as ours to compare.
        record = session.exec(statement).one()
    if record.content_hash == fields["content_hash"]:
        return _outcome(record, "unchanged", source_name)
    if _has_send(session, record):
        log.warning("column changed after sending started", extra={"date": str(parsed.date)})
        return _outcome(record, "locked", source_name)
    _run_check(check, parsed, source_name)
    for key, value in fields.items():
        setattr(record, key, value)
    record.updated_at = utcnow()
    session.add(record)
    session.flush()
    log.info("column updated", extra={"date": str(parsed.date), "slug": record.slug})
    return _outcome(record, "updated", source_name)


def _run_check(check: ColumnCheck | None, parsed: ParsedColumn, name: str) -> None:
    if check is None:
        return
    try:
        check(parsed)
    except ValueError as exc:
        raise ColumnFileError(name, str(exc)) from exc


def _insert_first(session: Session, record: ColumnRecord) -> ColumnRecord | None:
    """Insert in a savepoint; None when a concurrent import won the unique date."""
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        return None
    return record


def import_text(
    session: Session,
    text: str,
    *,
    fmt: Format,
    date: dt.date | None,
    name: str,
    check: ColumnCheck | None = None,
) -> ImportOutcome:
    """Import a column posted as text (admin API); `date` overrides the front matter's."""
    if fmt not in ("worldview", "markdown"):
        raise ValueError(f"unknown column format {fmt!r}")
    if len(text.encode("utf-8", "replace")) > MAX_COLUMN_BYTES:
        raise ColumnFileError(name, "larger than 1 MB")
    parsed = _parse(text, fmt, name)
    parsed.date = date or parsed.date
    if parsed.date is None:
        raise ColumnFileError(name, "no date: give a date or put one in the front matter")
    return store_column(session, parsed, source_text=text, source_name=name, check=check)


def import_paths(
    session: Session, paths: list[Path], *, check: ColumnCheck | None = None
) -> tuple[list[ImportOutcome], list[ColumnFileError]]:
    """Import files and folders (not recursive); a bad file is reported, the others go on."""
    files, errors = _column_files(paths)
    outcomes: list[ImportOutcome] = []
    first_for_date: dict[dt.date, str] = {}
    for path in files:
        try:
            parsed, text = read_column_file(path)
            _claim_date(first_for_date, parsed, str(path))
            outcome = store_column(
                session, parsed, source_text=text, source_name=str(path), check=check
            )
        except ColumnFileError as exc:
            errors.append(exc)
            continue
        outcomes.append(outcome)
    return outcomes, errors


def poll_feed(
    session: Session, url_or_path: str, *, check: ColumnCheck | None = None
) -> tuple[list[ImportOutcome], list[ColumnFileError]]:
    """Import every entry of an RSS/Atom feed (an http(s) URL or a local file)."""
    try:
        feed = _read_feed(url_or_path)
    except ColumnFileError as exc:
        return [], [exc]
    if feed.get("bozo") and not feed.entries:
        reason = str(feed.get("bozo_exception") or "not a feed")
        return [], [ColumnFileError(url_or_path, f"cannot parse feed: {reason}")]
    outcomes: list[ImportOutcome] = []
    errors: list[ColumnFileError] = []
    first_for_date: dict[dt.date, str] = {}
    for entry in feed.entries:
        name = _fit(str(entry.get("id") or entry.get("link") or url_or_path), NAME_MAX)
        label = f"{url_or_path} entry {name}"
        try:
            parsed, source_text = _column_from_entry(entry, label)
            _claim_date(first_for_date, parsed, label)
            outcome = store_column(
                session, parsed, source_text=source_text, source_name=name, check=check
            )
        except ColumnFileError as exc:
            errors.append(exc)
            continue
        outcomes.append(outcome)
    return outcomes, errors


def _parse(text: str, fmt: Format, name: str) -> ParsedColumn:
    try:
        return parse_markdown(text) if fmt == "markdown" else parse_worldview(text)
    except ColumnFormatError as exc:
        raise ColumnFileError(name, exc.reason) from exc


def _read_bytes(path: Path, limit: int) -> bytes:
    # Read at most limit + 1 bytes so a huge file (or /dev/zero) is refused, not loaded.
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise ColumnFileError(str(path), "file not found") from exc
    except IsADirectoryError as exc:
        raise ColumnFileError(str(path), "is a directory") from exc
    except OSError as exc:
        raise ColumnFileError(str(path), exc.strerror or type(exc).__name__) from exc
    if len(data) > limit:
        raise ColumnFileError(str(path), f"larger than {limit // 1_000_000} MB")
    return data


def _decode(name: str, data: bytes) -> str:
    """UTF-8 text (a BOM is dropped); binary data is refused with the reason."""
    if data.count(b"\0") * 100 > len(data):
        raise ColumnFileError(name, "binary file (NUL bytes), not a text column")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ColumnFileError(
            name, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc


def _column_files(paths: list[Path]) -> tuple[list[Path], list[ColumnFileError]]:
    """The files to import: each file given, and the column files directly in each folder."""
    files: list[Path] = []
    errors: list[ColumnFileError] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)  # read_column_file reports a missing or unreadable one
            continue
        try:
            files.extend(sorted(p for p in path.iterdir() if _is_column_file(p)))
        except OSError as exc:
            errors.append(ColumnFileError(str(path), exc.strerror or type(exc).__name__))
    return files, errors


def _is_column_file(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in COLUMN_SUFFIXES
        and not path.is_dir()
    )


def _claim_date(first_for_date: dict[dt.date, str], parsed: ParsedColumn, name: str) -> None:
    """Two sources for one date in one batch would silently overwrite each other."""
    assert parsed.date is not None
    earlier = first_for_date.setdefault(parsed.date, name)
    if earlier != name:
        raise ColumnFileError(name, f"same date {parsed.date} as {earlier}; kept that one")


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded at all.
    return re.sub("[\x00\ud800-\udfff]", "", text)


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _record_fields(parsed: ParsedColumn, source_text: str, source_name: str) -> dict[str, Any]:
    assert parsed.date is not None
    permalink = parsed.permalink
    if permalink is not None and len(permalink) > PERMALINK_MAX:
        permalink = None  # a truncated link would point nowhere
    return {
        "slug": slug_for(parsed.date, parsed.title),
        "title": _fit(parsed.title, TITLE_MAX),
        "byline": _fit(parsed.byline, BYLINE_MAX),
        "headlines": list(parsed.headlines),
        "sections": parsed.sections_json(),
        "keys": list(parsed.keys),
        "permalink": permalink,
        "source_text": source_text,
        "source_format": parsed.source_format,
        "source_name": _fit(source_name, NAME_MAX),
        "content_hash": hashlib.sha256(source_text.encode("utf-8")).hexdigest(),
    }


def _has_send(session: Session, record: ColumnRecord) -> bool:
    return session.exec(select(Send.id).where(Send.column_id == record.id)).first() is not None


def _outcome(record: ColumnRecord, action: Action, name: str) -> ImportOutcome:
    assert record.id is not None
    return ImportOutcome(
        column_id=record.id, slug=record.slug, date=record.date, action=action, name=name
    )


def _read_feed(url_or_path: str) -> Any:
    """The parsed feed; feedparser sanitizes entry HTML (no script, no javascript: links)."""
    if urlsplit(url_or_path).scheme in {"http", "https"}:
        data, headers = _fetch(url_or_path)
        return feedparser.parse(data, response_headers=headers)
    data = _read_bytes(Path(url_or_path), MAX_FEED_BYTES)
    return feedparser.parse(data, response_headers={"content-location": url_or_path})


def _fetch(url: str) -> tuple[bytes, dict[str, str]]:
    # Fetched here rather than by feedparser, which has no timeout and no size limit.
    request = urllib.request.Request(url, headers={"User-Agent": "Broadside feed poller"})
    try:
        with urllib.request.urlopen(request, timeout=FEED_TIMEOUT_SECONDS) as response:
            data = response.read(MAX_FEED_BYTES + 1)
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise ColumnFileError(url, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ColumnFileError(url, f"cannot fetch feed: {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise ColumnFileError(url, f"cannot fetch feed: {exc}") from exc
    if len(data) > MAX_FEED_BYTES:
        raise ColumnFileError(url, "feed larger than 5 MB")
    return data, {"content-type": content_type, "content-location": url}


def _column_from_entry(entry: Any, name: str) -> tuple[ParsedColumn, str]:
    """One feed entry as a column (one HTML block) and the canonical text its hash is of."""
    date = _entry_date(entry)
    if date is None:
        raise ColumnFileError(name, "entry has no published or updated date")
    body_html = _entry_html(entry)
    body_text = html_to_text(body_html)
    if not body_text:
        raise ColumnFileError(name, "entry has no content")
    title = _entry_title(entry)
    link = str(entry.get("link") or "")
    permalink = link if urlsplit(link).scheme in {"http", "https"} else None
    parsed = ParsedColumn(
        title=title,
        sections=[Section(heading="", blocks=[Block(kind="html", text=body_text, html=body_html)])],
        permalink=permalink,
        date=date,
        source_format="feed",
    )
    source = {"title": title, "date": date.isoformat(), "link": permalink, "html": body_html}
    return parsed, json.dumps(source, ensure_ascii=False, sort_keys=True)


def _entry_date(entry: Any) -> dt.date | None:
    for key in ("published", "updated"):
        written = _date_as_written(entry.get(key))
        if written is not None:
            return written
        parsed = entry.get(f"{key}_parsed")
        if parsed:
            return dt.date(parsed.tm_year, parsed.tm_mon, parsed.tm_mday)
    return None


def _date_as_written(value: object) -> dt.date | None:
    # feedparser's *_parsed is shifted to UTC: a column published late evening in New York
    # would land on the next day. The date as written in the feed is the column's date.
    if not isinstance(value, str):
        return None
    iso = re.match(r"\s*(\d{4}-\d{2}-\d{2})", value)
    try:
        if iso:
            return dt.date.fromisoformat(iso.group(1))
        return email.utils.parsedate_to_datetime(value).date()
    except (TypeError, ValueError):
        return None


def _entry_title(entry: Any) -> str:
    title = str(entry.get("title") or "")
    if "html" in str(entry.get("title_detail", {}).get("type", "")):
        title = html_to_text(title)
    return " ".join(clean_text(title).split()) or UNTITLED


def _entry_html(entry: Any) -> str:
    """The entry's body as safe HTML: full content if given, else the summary."""
    candidates = [*entry.get("content", []), entry.get("summary_detail") or {}]
    for item in candidates:
        value = clean_text(str(item.get("value") or "")).strip()
        if not value:
            continue
        if "html" in str(item.get("type", "")):
            return value
        return "".join(f"<p>{escape(p.strip())}</p>" for p in value.split("\n\n") if p.strip())
    return ""


class _TextExtractor(HTMLParser):
    """Text of an HTML fragment, with blank lines between block elements."""

    BLOCKS = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "blockquote", "pre", "table", "tr", "hr", "figure"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "figcaption"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        self.handle_starttag(tag, [])

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(fragment: str) -> str:
    """Plain text of sanitized HTML: one paragraph per block element."""
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    paragraphs = "".join(extractor.parts).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())

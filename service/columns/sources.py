"""Where columns come from: files and folders, text posted to the admin API, a feed; and
the rescan of COLUMNS_DIR and FEED_URL before each send. Sources are read first and stored
after, so no file or network read ever happens inside a database transaction's lock."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Literal

from sqlmodel import Session

from ..config import Settings
from . import feed
from .mail import mail_size_check
from .markdown import parse_markdown
from .model import ParsedColumn
from .parse import ColumnFormatError, parse_worldview
from .store import (
    Candidate,
    ColumnCheck,
    ColumnFileError,
    ImportOutcome,
    store_all,
    store_column,
)

log = logging.getLogger(__name__)

MAX_COLUMN_BYTES = 1_000_000
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
COLUMN_SUFFIXES = MARKDOWN_SUFFIXES | {".txt"}
NO_DATE = "no date: put YYYY-MM-DD in the file name or front matter"

Format = Literal["worldview", "markdown"]
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")


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
    text = _decode(str(path), read_limited(path, MAX_COLUMN_BYTES))
    fmt: Format = "markdown" if path.suffix.lower() in MARKDOWN_SUFFIXES else "worldview"
    parsed = _parse(text, fmt, str(path))
    parsed.date = parsed.date or date_from_name(path.name)
    if parsed.date is None:
        raise ColumnFileError(str(path), NO_DATE)
    return parsed, text


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


def read_paths(paths: list[Path]) -> tuple[list[Candidate], list[ColumnFileError]]:
    """The columns in files and folders (not recursive), and the files that are not columns."""
    files, errors = _column_files(paths)
    candidates: list[Candidate] = []
    for path in files:
        try:
            parsed, text = read_column_file(path)
        except ColumnFileError as exc:
            errors.append(exc)
            continue
        candidates.append(Candidate(parsed, text, str(path), str(path)))
    return candidates, errors


def import_paths(
    session: Session, paths: list[Path], *, check: ColumnCheck | None = None
) -> tuple[list[ImportOutcome], list[ColumnFileError]]:
    """Import files and folders (not recursive); a bad file is reported, the others go on."""
    candidates, errors = read_paths(paths)
    outcomes, failed = store_all(session, candidates, check=check)
    return outcomes, errors + failed


def read_feed(url_or_path: str) -> tuple[list[Candidate], list[ColumnFileError]]:
    """The columns of an RSS/Atom feed (an http(s) URL or a local file)."""
    try:
        if feed.is_url(url_or_path):
            data, headers = feed.fetch(url_or_path)
        else:
            data = read_limited(Path(url_or_path), feed.MAX_FEED_BYTES)
            headers = {"content-location": url_or_path}
    except ColumnFileError as exc:
        return [], [exc]
    return feed.columns_in(data, headers, url_or_path)


def poll_feed(
    session: Session, url_or_path: str, *, check: ColumnCheck | None = None
) -> tuple[list[ImportOutcome], list[ColumnFileError]]:
    """Import every entry of an RSS/Atom feed (an http(s) URL or a local file)."""
    candidates, errors = read_feed(url_or_path)
    outcomes, failed = store_all(session, candidates, check=check)
    return outcomes, errors + failed


def refresh(
    session: Session, settings: Settings
) -> tuple[list[ImportOutcome], list[ColumnFileError]]:
    """Import new or edited columns from COLUMNS_DIR and FEED_URL (read before the first
    statement, so the transaction starts after the reading); one log line per bad source."""
    candidates: list[Candidate] = []
    errors: list[ColumnFileError] = []
    if settings.columns_dir.is_dir():
        found, failed = read_paths([settings.columns_dir])
        candidates += found
        errors += failed
    feed_batch: list[Candidate] = []
    if settings.feed_url:
        feed_batch, failed = read_feed(settings.feed_url)
        errors += failed
    check = mail_size_check(settings)
    outcomes: list[ImportOutcome] = []
    for batch in (candidates, feed_batch):
        stored, failed = store_all(session, batch, check=check)
        outcomes += stored
        errors += failed
    for error in errors:
        log.warning("column not imported: %s", error)
    for outcome in outcomes:
        if outcome.action in ("created", "updated"):
            log.info("column %s %s (%s)", outcome.slug, outcome.action, outcome.name)
    return outcomes, errors


def _parse(text: str, fmt: Format, name: str) -> ParsedColumn:
    try:
        return parse_markdown(text) if fmt == "markdown" else parse_worldview(text)
    except ColumnFormatError as exc:
        raise ColumnFileError(name, exc.reason) from exc


def read_limited(path: Path, limit: int) -> bytes:
    # Read at most limit + 1 bytes so a huge file (or /dev/zero) is refused, not loaded.
    """The bytes of `path`, refused (ColumnFileError) past `limit` without reading it all."""
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

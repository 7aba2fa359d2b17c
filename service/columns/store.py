"""Where columns are kept: one per date, stored once, locked once its send starts; and the
look-ups every other part reads columns through."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..clock import utcnow
from ..models import ColumnRecord, Send
from .model import ParsedColumn

log = logging.getLogger(__name__)

SLUG_MAX_CHARS = 80
# Column limits from the table: PostgreSQL refuses longer strings outright.
TITLE_MAX, BYLINE_MAX, PERMALINK_MAX, NAME_MAX = 500, 500, 1000, 500

Action = Literal["created", "updated", "unchanged", "locked"]
# Raises ValueError (with a reason for the operator) for a column that cannot be stored.
ColumnCheck = Callable[[ParsedColumn], None]


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


@dataclass(frozen=True)
class Candidate:
    """A column read from a source (file, text, feed entry), not yet stored."""

    parsed: ParsedColumn
    source_text: str
    source_name: str  # kept with the column
    label: str  # how errors name it


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


def store_all(
    session: Session, candidates: list[Candidate], *, check: ColumnCheck | None = None
) -> tuple[list[ImportOutcome], list[ColumnFileError]]:
    """Store a batch read from one source; a bad column is reported, the others go on. Two
    sources of one date in one batch would silently overwrite each other: the first wins."""
    outcomes: list[ImportOutcome] = []
    errors: list[ColumnFileError] = []
    first_for_date: dict[dt.date, str] = {}
    for candidate in candidates:
        parsed = candidate.parsed
        assert parsed.date is not None
        earlier = first_for_date.setdefault(parsed.date, candidate.label)
        if earlier != candidate.label:
            errors.append(
                ColumnFileError(
                    candidate.label, f"same date {parsed.date} as {earlier}; kept that one"
                )
            )
            continue
        try:
            outcomes.append(
                store_column(
                    session,
                    parsed,
                    source_text=candidate.source_text,
                    source_name=candidate.source_name,
                    check=check,
                )
            )
        except ColumnFileError as exc:
            errors.append(ColumnFileError(candidate.label, exc.reason))
    return outcomes, errors


def column_for(session: Session, day: dt.date) -> ColumnRecord | None:
    """The column of a date, if there is one."""
    return session.exec(select(ColumnRecord).where(ColumnRecord.date == day)).first()


def scheduled_due(session: Session, now: dt.datetime) -> list[ColumnRecord]:
    """Columns the operator scheduled for a moment that has come (`now`, naive UTC) whose
    send has not started and that are not cancelled."""
    started = select(Send.id).where(col(Send.column_id) == col(ColumnRecord.id)).exists()
    return list(
        session.exec(
            select(ColumnRecord).where(
                col(ColumnRecord.send_at).is_not(None),
                col(ColumnRecord.send_at) <= now,
                col(ColumnRecord.cancelled_at).is_(None),
                ~started,
            )
        )
    )


class ColumnLocked(Exception):
    """The column's send has started: its schedule, like its text, can no longer change."""


def schedule(
    session: Session,
    column_id: int,
    *,
    send_at: dt.datetime | None,
    cancelled: bool,
    now: dt.datetime | None = None,
) -> ColumnRecord:
    """Set when a column goes out before its send starts: at `send_at` (naive UTC) instead of
    SEND_TIME on its date (None: at SEND_TIME), or not at all (`cancelled`). LookupError for
    an unknown column, ColumnLocked once its send has started."""
    record = session.get(ColumnRecord, column_id) if 0 < column_id < 2**31 else None
    if record is None:
        raise LookupError(f"no column {column_id}")
    if _has_send(session, record):
        raise ColumnLocked(f"the column of {record.date} has started sending")
    now = now or utcnow()
    record.send_at = send_at
    record.cancelled_at = (record.cancelled_at or now) if cancelled else None
    record.updated_at = now
    session.add(record)
    session.flush()
    return record


def column_by_id(session: Session, column_id: int) -> ColumnRecord | None:
    """The column with this id, or None."""
    return session.get(ColumnRecord, column_id) if 0 < column_id < 2**31 else None


def column_by_slug(session: Session, slug: str) -> ColumnRecord | None:
    """The column at /columns/{slug}, if there is one."""
    return session.exec(select(ColumnRecord).where(ColumnRecord.slug == slug)).first()


def latest(session: Session, limit: int) -> list[ColumnRecord]:
    """The newest columns first."""
    query = select(ColumnRecord).order_by(col(ColumnRecord.date).desc()).limit(limit)
    return list(session.exec(query))


def last_change(records: list[ColumnRecord]) -> dt.datetime | None:
    """When the latest of these columns was stored or edited (a feed's <updated>)."""
    return max((record.updated_at for record in records), default=None)


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded at all.
    return re.sub("[\x00\ud800-\udfff]", "", text)


def fit(text: str, limit: int) -> str:
    """`text` cut to `limit` characters at most, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _record_fields(parsed: ParsedColumn, source_text: str, source_name: str) -> dict[str, Any]:
    assert parsed.date is not None
    permalink = parsed.permalink
    if permalink is not None and len(permalink) > PERMALINK_MAX:
        permalink = None  # a truncated link would point nowhere
    return {
        "slug": slug_for(parsed.date, parsed.title),
        "title": fit(parsed.title, TITLE_MAX),
        "byline": fit(parsed.byline, BYLINE_MAX),
        "headlines": list(parsed.headlines),
        "sections": parsed.sections_json(),
        "keys": list(parsed.keys),
        "permalink": permalink,
        "source_text": source_text,
        "source_format": parsed.source_format,
        "source_name": fit(source_name, NAME_MAX),
        "content_hash": hashlib.sha256(source_text.encode("utf-8")).hexdigest(),
    }


def _has_send(session: Session, record: ColumnRecord) -> bool:
    return session.exec(select(Send.id).where(Send.column_id == record.id)).first() is not None


def _outcome(record: ColumnRecord, action: Action, name: str) -> ImportOutcome:
    assert record.id is not None
    return ImportOutcome(
        column_id=record.id, slug=record.slug, date=record.date, action=action, name=name
    )

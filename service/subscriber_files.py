"""Reader lists in and out: CSV files imported in set-based batches, exports as CSV or JSON."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import operator
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, BinaryIO, NamedTuple

from sqlalchemy import (
    Column,
    ColumnElement,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from .clock import known_zone, utcnow
from .context import AppContext
from .db import transaction
from .errors import DomainError, InvalidInput
from .mail.message import one_line
from .mail.outbox import queue_messages
from .models import Cadence, Consent, Subscriber, SubscriberStatus, Suppression
from .subscriptions import (
    Choices,
    clean_cadence,
    clean_name,
    clean_weekday,
    confirmation,
    normalize_address,
)

IMPORT_BATCH = 1000  # rows per transaction: a crash leaves whole batches behind
MAX_BATCH = 5000  # SQLite allows 32,766 parameters in one statement (IN lists, hashes)
EXPORT_PAGE = 5000  # rows per keyset page, each page read in a short transaction of its own
MAX_REPORTED = 1000  # invalid lines kept for the report; beyond this they are only counted
MAX_SOURCE = 200  # consents.source
IMPORT_MAIL = "import-confirm"  # not "confirm": the outbox checks it against the suppression list
IMPORTED = "import"  # consent actions: added pending (a confirmation mail asks) ...
IMPORTED_CONFIRMED = "import-confirmed"  # ... or active, on the consent the source names

EMAIL_HEADERS = ("email", "e-mail", "email address", "email_address")
NAME_HEADERS = ("name",)
STATUS_HEADERS = ("status",)
# A reader's delivery choices (issue 16), as the export writes them; an empty cell is the default.
TIMEZONE_HEADERS = ("timezone", "time zone", "time_zone")
CADENCE_HEADERS = ("cadence",)
WEEKDAY_HEADERS = ("digest_weekday", "digest weekday", "weekday")
# The optional columns, in the order of Row's fields after `email`.
OPTIONAL_HEADERS = (
    NAME_HEADERS,
    STATUS_HEADERS,
    TIMEZONE_HEADERS,
    CADENCE_HEADERS,
    WEEKDAY_HEADERS,
)
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): the
# export puts a ' before such a value and the import takes it off again, so files round-trip.
FORMULA_START = ("=", "+", "-", "@")
# A reader who left is never brought back by a file, whatever its `status` column says.
LEFT = frozenset(
    {
        SubscriberStatus.unsubscribed,
        SubscriberStatus.bounced,
        SubscriberStatus.complained,
        SubscriberStatus.erased,
    }
)

_subscribers: Table = Subscriber.__table__  # type: ignore[attr-defined]
_consents: Table = Consent.__table__  # type: ignore[attr-defined]
_suppressions: Table = Suppression.__table__  # type: ignore[attr-defined]


class UnusableFile(DomainError):
    """The file cannot be read as a list of readers: empty, not UTF-8, malformed CSV, or no
    email column. The message says which, with the line where it is known."""


class Row(NamedTuple):  # a tuple: a million are made, far cheaper than frozen dataclasses
    """One data row of an import file, as written (`line` counts from 1, the header included)."""

    line: int
    email: str
    name: str = ""
    status: str = ""
    timezone: str = ""
    cadence: str = ""
    digest_weekday: str = ""


@dataclass(frozen=True)
class CsvList:
    """A readable CSV file: its rows, streamed, and the header's columns we do not use."""

    rows: Iterator[Row]
    ignored_columns: tuple[str, ...]


@dataclass(frozen=True)
class InvalidLine:
    """A row that was skipped because a value in it is not valid."""

    line: int
    value: str
    reason: str


@dataclass
class ImportSummary:
    """What an import did. Each row read lands in exactly one of imported, updated, unchanged,
    repeated, suppressed, left and invalid; `mailed` counts the confirmation mails queued."""

    imported: int = 0  # new readers
    updated: int = 0  # readers already there whose name changed, or who became active
    unchanged: int = 0  # already on the list as the row says (a rerun, a later repeat)
    repeated: int = 0  # the same address again within one batch of the file
    suppressed: int = 0  # on the suppression list: never imported, never mailed
    left: int = 0  # unsubscribed, bounced, complained or erased: never brought back
    invalid: int = 0
    mailed: int = 0
    # Readers already there whose own time zone, cadence or weekday the row contradicts: they
    # keep theirs (the reader's choice, see _write); counted so the operator is told.
    choices_kept: int = 0
    invalid_lines: list[InvalidLine] = field(default_factory=list)  # the first MAX_REPORTED
    ignored_columns: tuple[str, ...] = ()
    rows: int = 0  # data rows read
    stopped: str | None = None  # why reading stopped before the end of the file

    @property
    def skipped(self) -> int:
        """Rows that changed nothing although they were valid."""
        return self.unchanged + self.repeated + self.suppressed + self.left

    def merge(self, part: ImportSummary) -> None:
        """Add the counts of a part of the import (and its invalid lines while there is room)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.invalid_lines.extend(part.invalid_lines[: MAX_REPORTED - len(self.invalid_lines)])

    def add_invalid(self, line: int, value: str, reason: str) -> None:
        """Count an invalid row; keep its details while there is room (constant memory)."""
        self.invalid += 1
        if len(self.invalid_lines) < MAX_REPORTED:
            self.invalid_lines.append(InvalidLine(line, value[:80], reason))


# Every count an ImportSummary keeps.
COUNTS = (
    "imported",
    "updated",
    "unchanged",
    "repeated",
    "suppressed",
    "left",
    "invalid",
    "mailed",
    "choices_kept",
    "rows",
)


# Reading -------------------------------------------------------------------------------


def read_csv(stream: BinaryIO) -> CsvList:
    """The rows of a UTF-8 CSV file (a BOM is fine) whose header row names an `email` column,
    and optionally `name`, `status`, `timezone`, `cadence` and `digest_weekday`, in any case
    and order. A seekable stream is checked for UTF-8 first, so a bad byte at the end
    imports nothing. UnusableFile otherwise."""
    if stream.seekable():
        _check_utf8(stream)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        cells, width, ignored = _layout(reader)
    except UnusableFile:
        text.detach()  # the binary stream is the caller's to close, not ours
        raise
    return CsvList(_rows(reader, text, cells, width), ignored)


def _layout(reader: Any) -> tuple[tuple[int | None, ...], int, tuple[str, ...]]:
    """From the header row: where the email column and the optional ones are (in the order
    of Row's fields; None: not in the file), how many columns it has, and the headings of
    the columns we do not use."""
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UnusableFile(f"line 1: {_reason(exc)}") from None
    if header is None:
        raise UnusableFile("the file is empty; it needs a header row naming an email column")
    names = [heading.strip().lower() for heading in header]
    email_at = _column(names, EMAIL_HEADERS)
    if email_at is None:
        shown = ", ".join(repr(h) for h in header)[:200]
        raise UnusableFile(f"the header row (line 1) has no email column; it has {shown}")
    cells = (email_at, *(_column(names, wanted) for wanted in OPTIONAL_HEADERS))
    ignored = tuple(h for at, h in enumerate(header) if at not in cells)
    return cells, len(header), ignored


def _check_utf8(stream: BinaryIO) -> None:
    """UnusableFile naming the line of the first byte that is not UTF-8; then back to the start."""
    start = stream.tell()
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    while True:
        chunk = stream.read(1 << 20)
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            line += chunk[: max(exc.start, 0)].count(b"\n")
            raise UnusableFile(f"line {line}: not UTF-8; save the file as UTF-8 CSV") from None
        if not chunk:
            break
        line += chunk.count(b"\n")
    stream.seek(start)


def _column(names: list[str], wanted: tuple[str, ...]) -> int | None:
    return next((at for at, name in enumerate(names) if name in wanted), None)


def _rows(
    reader: Any, text: io.TextIOWrapper, cells: tuple[int | None, ...], width: int
) -> Iterator[Row]:
    """Data rows, each with the line it starts on (a quoted value may span lines); entirely
    empty ones (a spreadsheet's trailing rows) are passed over."""
    # A million rows: one C call picks a row's cells (a column the file does not have is the
    # empty string appended to each row, at -1), and _make skips Row's keyword-binding __new__.
    pick = operator.itemgetter(*(-1 if at is None else at for at in cells))
    make = Row._make
    try:
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader, None)
            except (UnicodeDecodeError, csv.Error) as exc:
                raise UnusableFile(f"line {line}: {_reason(exc)}") from None
            if fields is None:
                return
            if "".join(fields).strip():
                if len(fields) < width:  # a short row: its missing cells are empty
                    fields.extend([""] * (width - len(fields)))
                fields.append("")
                yield make((line, *pick(fields)))
    finally:
        with contextlib.suppress(ValueError):  # the caller closed the stream already
            text.detach()  # the binary stream is the caller's to close, not ours


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8; save the file as UTF-8 CSV"
    return f"not readable as CSV ({exc}); an unclosed quote swallows the lines after it"


# Importing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    """How rows become readers: pending with a confirmation mail, or active on a named consent."""

    confirmed: bool
    source: str  # the consent records' source


def import_options(
    *, confirmed: bool, consent_source: str | None, file_name: str = ""
) -> ImportOptions:
    """Checked options; InvalidInput("consent_source") when readers would be imported as
    confirmed without saying where they agreed, or with a source too long to keep whole."""
    source = one_line((consent_source or "").strip())
    if len(source) > MAX_SOURCE:
        raise InvalidInput("consent_source", f"at most {MAX_SOURCE} characters, please.")
    if confirmed and not source:
        raise InvalidInput(
            "consent_source",
            "readers imported as confirmed need a consent source: "
            "where they agreed to receive the column",
        )
    return ImportOptions(confirmed, source or one_line(f"import:{file_name}")[:MAX_SOURCE])


def import_csv(
    engine: Engine,
    ctx: AppContext,
    stream: BinaryIO,
    *,
    file_name: str,
    confirmed: bool = False,
    consent_source: str | None = None,
    batch_size: int = IMPORT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import a CSV file of readers (an upload, an open file) in batches of `batch_size`, each
    its own transaction. UnusableFile or InvalidInput before anything is written."""
    options = import_options(
        confirmed=confirmed, consent_source=consent_source, file_name=file_name
    )
    listing = read_csv(stream)
    summary = import_rows(engine, ctx, listing.rows, options, batch_size, progress)
    summary.ignored_columns = listing.ignored_columns
    return summary


def import_rows(
    engine: Engine,
    ctx: AppContext,
    rows: Iterable[Row],
    options: ImportOptions,
    batch_size: int = IMPORT_BATCH,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> ImportSummary:
    """Import `rows` in batches, each committed on its own, so a crash leaves whole batches
    and a rerun of the same rows changes nothing. `progress(rows read)` after each batch. A
    file that turns unreadable midway stops the import there (`summary.stopped`). One
    batch is written while the next is read and checked: the database works meanwhile."""
    summary = ImportSummary()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import") as writer:
        writing: Future[ImportSummary] | None = None
        for batch in _batches(rows, min(max(batch_size, 1), MAX_BATCH), summary):
            checked = _checked(ctx, batch, options, summary)
            summary.rows += len(batch)
            if writing is not None:
                _written(summary, writing.result(), progress)
            writing = writer.submit(_write_alone, engine, ctx, checked, options, now)
        if writing is not None:
            _written(summary, writing.result(), progress)
    return summary


def _written(
    summary: ImportSummary, part: ImportSummary, progress: Callable[[int], None] | None
) -> None:
    summary.merge(part)
    if progress is not None:
        progress(summary.rows)


def _batches(rows: Iterable[Row], size: int, summary: ImportSummary) -> Iterator[list[Row]]:
    batch: list[Row] = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
    except UnusableFile as exc:
        summary.stopped = str(exc)  # the rows before it are good: import them
    if batch:
        yield batch


def import_batch(
    session: Session,
    ctx: AppContext,
    rows: list[Row],
    options: ImportOptions,
    *,
    now: datetime | None = None,
) -> ImportSummary:
    """Import a few rows in the caller's transaction (what import_rows does per batch)."""
    summary = ImportSummary(rows=len(rows))
    checked = _checked(ctx, rows, options, summary)
    summary.merge(_write(session, ctx, checked, options, now or utcnow()))
    return summary


@dataclass
class _Wanted:
    """What the row of a valid, distinct address of one batch asks for. A choice whose cell
    is empty is None: a new reader gets the default, one already there keeps their own."""

    name: str
    active: bool
    timezone: str | None = None
    cadence: Cadence | None = None
    digest_weekday: int | None = None

    def repeat(
        self, name: str, timezone: str | None, cadence: Cadence | None, weekday: int | None
    ) -> None:
        """The same address again in the batch: its non-empty values win."""
        self.name = name or self.name
        self.timezone = timezone or self.timezone
        self.cadence = cadence or self.cadence
        self.digest_weekday = weekday or self.digest_weekday

    @property
    def gives_choices(self) -> bool:
        return (self.timezone, self.cadence, self.digest_weekday) != (None, None, None)

    def choices(self) -> Choices:
        """What a new reader is stored with: the row's choices, the defaults for empty cells."""
        default = Choices()
        return Choices(
            self.timezone,
            self.cadence or default.cadence,
            self.digest_weekday or default.digest_weekday,
        )

    def contradicts(self, known: _Known) -> bool:
        """Whether a choice the row gives differs from the one the reader has."""
        given = (
            (self.timezone, known.timezone),
            (self.cadence, known.cadence),
            (self.digest_weekday, known.digest_weekday),
        )
        return any(mine is not None and mine != theirs for mine, theirs in given)


@dataclass(frozen=True)
class _Checked:
    """One batch's valid, distinct addresses, and their keyed hashes (suppression list)."""

    wanted: dict[str, _Wanted]
    hashes: dict[str, str]  # hash -> address


@dataclass(frozen=True)
class _Known:
    id: int
    status: str
    name: str
    pending_name: str | None
    timezone: str | None
    cadence: str
    digest_weekday: int


def _checked(
    ctx: AppContext, rows: list[Row], options: ImportOptions, summary: ImportSummary
) -> _Checked:
    """Each valid address once (a repeat counts as such; its last non-empty name and choices
    are kept); invalid rows and rows whose `status` says the reader left are counted here.
    No database."""
    wanted: dict[str, _Wanted] = {}
    for row in rows:
        try:
            address = normalize_address(_unescaped(row.email))
            name = clean_name(_unescaped(row.name))
            status = _row_status(row.status) if row.status else None
            zone = _row_zone(row.timezone) if row.timezone else None
            cadence = _row_cadence(row.cadence) if row.cadence else None
            weekday = _row_weekday(row.digest_weekday) if row.digest_weekday else None
        except InvalidInput as exc:
            value = getattr(row, exc.field, "")
            summary.add_invalid(row.line, value, f"{exc.field}: {exc.message}")
            continue
        if status in LEFT:
            summary.left += 1
        elif address in wanted:
            summary.repeated += 1
            wanted[address].repeat(name, zone, cadence, weekday)
        else:
            # A row our own export wrote as `pending` never confirmed: it stays pending.
            active = options.confirmed and status != SubscriberStatus.pending
            wanted[address] = _Wanted(name, active, zone, cadence, weekday)
    hashes = ctx.tokens.hashed_addresses(wanted)  # addresses are normalised already
    return _Checked(wanted, hashes)


def _write_alone(
    engine: Engine, ctx: AppContext, batch: _Checked, options: ImportOptions, now: datetime | None
) -> ImportSummary:
    with transaction(engine) as session:
        return _write(session, ctx, batch, options, now or utcnow())


def _write(
    session: Session, ctx: AppContext, batch: _Checked, options: ImportOptions, now: datetime
) -> ImportSummary:
    """Write one checked batch, set-based: one look-up of the suppressed addresses, one of
    the readers already there, then multi-row writes. Returns what it counted.

    A reader's time zone, cadence and weekday are written only when the import adds them. A
    reader already there keeps their own, unlike their name: those choices are theirs (the
    preferences page, with a consent record each), and changing one re-times the deliveries
    waiting for them and may put them in this week's digest (delivery.choices), work per
    reader that a set-based batch does not do. A row that says otherwise is counted in
    `choices_kept`, so the operator is told rather than silently ignored."""
    summary = ImportSummary()
    if not batch.wanted:
        return summary
    suppressed = _suppressed(session, batch.hashes)
    known = _known(session, [a for a in batch.wanted if a not in suppressed])
    new: dict[str, _Wanted] = {}
    changes: list[dict[str, Any]] = []
    for address, want in batch.wanted.items():
        if address in suppressed:
            summary.suppressed += 1
        elif (found := known.get(address)) is None:
            new[address] = want
        elif found.status in LEFT:
            summary.left += 1
        else:
            if want.gives_choices and want.contradicts(found):
                summary.choices_kept += 1
            if (change := _change(found, want, now)) is not None:
                changes.append(change)
            else:
                summary.unchanged += 1
    _apply(session, changes)
    summary.updated += len(changes)
    activated = [c["id"] for c in changes if c.get("status") == SubscriberStatus.active]
    _consent(session, activated, IMPORTED_CONFIRMED, options.source, now)
    _insert_new(session, ctx, new, options, summary, now)
    return summary


def _unescaped(value: str) -> str:
    if value[:1] == "'" and value[1:2] in FORMULA_START:
        return value[1:]
    return value


def _row_zone(value: str) -> str | None:
    """A time zone cell as stored (empty: None), or InvalidInput: an IANA name zoneinfo knows."""
    text = value.strip()
    if not text:
        return None
    zone = known_zone(text)
    if zone is None:
        raise InvalidInput("timezone", "not a time zone we know (an IANA name: Europe/Berlin)")
    return zone


def _row_cadence(value: str) -> Cadence | None:
    """A cadence cell as stored (empty: None), or InvalidInput."""
    text = value.strip()
    try:
        return clean_cadence(text) if text else None
    except InvalidInput:
        known = ", ".join(c.value for c in Cadence)
        raise InvalidInput("cadence", f"not a cadence ({known})") from None


def _row_weekday(value: str) -> int | None:
    """A digest weekday cell as stored (empty: None), or InvalidInput."""
    text = value.strip()
    try:
        return clean_weekday(text) if text else None
    except InvalidInput:
        raise InvalidInput("digest_weekday", "not an ISO weekday (1 Monday … 7 Sunday)") from None


def _row_status(value: str) -> SubscriberStatus | None:
    text = value.strip().lower()
    if not text:
        return None
    try:
        return SubscriberStatus(text)
    except ValueError:
        known = ", ".join(s.value for s in SubscriberStatus)
        raise InvalidInput("status", f"not a reader status ({known})") from None


def _suppressed(session: Session, hashes: dict[str, str]) -> set[str]:
    """The addresses whose keyed hash (current or retired key) is on the suppression list."""
    column = _suppressions.c.address_hash
    found = session.execute(select(column).where(_among(session, column, list(hashes))))
    return {hashes[h] for (h,) in found}


def _known(session: Session, addresses: list[str]) -> dict[str, _Known]:
    """The readers already at `addresses`, locked (PostgreSQL) until this batch commits; in
    id order, so that two imports running at once take their locks in one order."""
    if not addresses:
        return {}
    s = _subscribers.c
    rows = session.execute(
        select(
            s.email,
            s.id,
            s.status,
            s.name,
            s.pending_name,
            s.timezone,
            s.cadence,
            s.digest_weekday,
        )
        .where(_among(session, s.email, addresses))
        .order_by(s.id)
        .with_for_update()
    )
    return {email: _Known(*known) for email, *known in rows}


def _change(known: _Known, want: _Wanted, now: datetime) -> dict[str, Any] | None:
    """The columns to update on a reader already there, or None. A pending reader becomes
    active on a confirmed import (the operator vouches for the consent the source names);
    one who left is never touched."""
    if known.status == SubscriberStatus.active:
        if want.name and want.name != known.name:
            return {"id": known.id, "name": want.name, "updated_at": now}
        return None
    if known.status != SubscriberStatus.pending:
        return None
    if want.active:
        return {
            "id": known.id,
            "status": SubscriberStatus.active.value,
            "name": want.name or known.pending_name or known.name,
            "pending_name": None,
            "confirm_nonce": None,
            "confirmed_at": now,
            "updated_at": now,
        }
    if want.name and want.name != known.pending_name:
        return {"id": known.id, "pending_name": want.name, "updated_at": now}
    return None


def _apply(session: Session, changes: list[dict[str, Any]]) -> None:
    """Executemany UPDATEs by primary key, one per shape of change."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        shapes.setdefault(tuple(change), []).append(change)
    for shape, rows in shapes.items():
        values = {name: _param(name) for name in shape if name != "id"}
        statement = update(_subscribers).where(_subscribers.c.id == _param("id")).values(values)
        session.connection().execute(
            statement, [{f"p_{name}": value for name, value in row.items()} for row in rows]
        )


def _param(name: str) -> Any:
    return bindparam(f"p_{name}")


def _insert_new(
    session: Session,
    ctx: AppContext,
    new: dict[str, _Wanted],
    options: ImportOptions,
    summary: ImportSummary,
    now: datetime,
) -> None:
    """Multi-row INSERTs of the new readers: active ones with their name, pending ones with
    the name waiting (as a subscribe's does) until the address confirms, and their
    confirmation mail queued; both with the choices their rows give, if any row of the batch
    gives one (else the table's defaults, and no extra columns to send). An address a
    concurrent subscribe took meanwhile is left to it."""
    active: list[dict[str, Any]] = [
        {"email": a, "name": w.name} for a, w in new.items() if w.active
    ]
    nonces = {a: secrets.token_urlsafe(9) for a, w in new.items() if not w.active}
    pending: list[dict[str, Any]] = [
        {"email": a, "pending_name": new[a].name or None, "confirm_nonce": nonce}
        for a, nonce in nonces.items()
    ]
    if any(w.gives_choices for w in new.values()):
        for row in [*active, *pending]:
            chosen = new[row["email"]].choices()
            row["timezone"] = chosen.timezone
            row["cadence"] = chosen.cadence.value
            row["digest_weekday"] = chosen.digest_weekday
    stamps = {"created_at": now, "updated_at": now}
    confirmed = _insert_readers(
        session, active, {"status": SubscriberStatus.active.value, "confirmed_at": now, **stamps}
    )
    waiting = _insert_readers(
        session, pending, {"status": SubscriberStatus.pending.value, **stamps}
    )
    summary.imported += len(confirmed) + len(waiting)
    summary.unchanged += len(new) - len(confirmed) - len(waiting)
    mails = [
        confirmation(ctx, subscriber_id=i, email=email, nonce=nonces[email], kind=IMPORT_MAIL)
        for i, email in waiting
    ]
    queue_messages(session, ctx, mails)  # one INSERT; the mail rendered once per process
    summary.mailed += len(waiting)
    _consent(session, [i for i, _ in confirmed], IMPORTED_CONFIRMED, options.source, now)
    _consent(session, [i for i, _ in waiting], IMPORTED, options.source, now)


def _insert_readers(
    session: Session, rows: list[dict[str, Any]], same: dict[str, Any]
) -> list[tuple[int, str]]:
    """(id, email) of each reader inserted; an address already taken is skipped."""
    if not rows:
        return []
    s = _subscribers.c
    inserted = _insert_rows(
        session,
        _subscribers,
        rows,
        same,
        unique="email",
        returning=(s.id, s.email),
    )
    return [(int(id), email) for id, email in inserted]


def _consent(
    session: Session, subscriber_ids: list[int], action: str, source: str, now: datetime
) -> None:
    """One consent record per reader, in one multi-row INSERT (no IP: nobody asked by HTTP)."""
    if subscriber_ids:
        rows = [{"subscriber_id": i} for i in subscriber_ids]
        _insert_rows(session, _consents, rows, {"action": action, "at": now, "source": source})


# Set-based statements, in the form each database runs fastest ---------------------------


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _among(session: Session, column: Column[Any], values: list[str]) -> ColumnElement[bool]:
    """`column IN values`; on PostgreSQL `= ANY(one array)` of one text parameter split on
    line ends (no address or hash holds one): psycopg does not cache the parsing of long
    queries, a thousand placeholders cost more to parse than to run, and psycopg dumps
    a list parameter element by element in Python."""
    if _postgresql(session):
        assert not any("\n" in value for value in values)
        joined = bindparam(None, "\n".join(values), type_=Text)
        return column == any_(func.string_to_array(joined, "\n"))
    return column.in_(values)


def _insert_rows(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    same: dict[str, Any],
    *,
    unique: str | None = None,
    returning: tuple[Column[Any], ...] = (),
) -> Sequence[Any]:
    """One INSERT of many `rows` (each also taking the values in `same`), skipping those
    whose `unique` key is taken, by another row or a concurrent transaction. On PostgreSQL
    the rows come from jsonb_to_recordset() of one JSON parameter (encoded in C, parsed in
    C), and `same` is bound once: a statement of a handful of parameters however many rows
    it carries."""
    if _postgresql(session):
        varying = list(rows[0])
        shape = [column(n, table.c[n].type) for n in varying]
        document = cast(bindparam(None, json.dumps(rows), type_=Text), JSONB)
        source = (
            func.jsonb_to_recordset(document)
            .table_valued(*shape)
            .render_derived(name="incoming", with_types=True)
        )
        fixed = [literal(value, table.c[name].type) for name, value in same.items()]
        values = select(*(source.c[n] for n in varying), *fixed)
        statement: Any = postgresql_insert(table).from_select([*varying, *same], values)
    else:
        return _sqlite_insert_rows(session, table, rows, same, unique, returning)
    if unique is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[unique])
    if returning:
        statement = statement.returning(*returning)
    result = session.connection().execute(statement)
    return result.all() if returning else ()


def _sqlite_insert_rows(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    same: dict[str, Any],
    unique: str | None,
    returning: tuple[Column[Any], ...],
) -> Sequence[Any]:
    """_insert_rows on SQLite: the driver's executemany of one prepared INSERT, the values
    in `same` converted once (SQLAlchemy would convert every row's datetimes again). The
    rows inserted are those past the largest id before: this transaction holds SQLite's
    write lock from its BEGIN IMMEDIATE (db.py), so no other writer's rows can be among them."""
    dialect = session.get_bind().dialect
    varying = list(rows[0])
    same = {**_scalar_defaults(table, {*varying, *same}), **same}
    fixed = []
    for name, value in same.items():
        convert = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        fixed.append(convert(value) if convert is not None else value)
    columns = ", ".join(f'"{name}"' for name in (*varying, *same))
    marks = ", ".join("?" * (len(varying) + len(same)))
    conflict = f' ON CONFLICT ("{unique}") DO NOTHING' if unique is not None else ""
    sql = f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks}){conflict}'
    connection = session.connection()
    before = 0
    if returning:
        before = connection.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    connection.exec_driver_sql(sql, [(*(r[n] for n in varying), *fixed) for r in rows])
    if not returning:
        return ()
    return connection.execute(
        select(*returning).where(table.c.id > before).order_by(table.c.id)
    ).all()


def _scalar_defaults(table: Table, given: set[str]) -> dict[str, Any]:
    """The Python-side defaults SQLAlchemy would add to an INSERT of the `given` columns."""
    defaults = {}
    for each in table.columns:
        default = each.default
        if each.name in given or default is None:
            continue
        assert default.is_scalar, f"{table.name}.{each.name} needs a value"
        defaults[each.name] = default.arg  # type: ignore[attr-defined]
    return defaults


# Exporting -----------------------------------------------------------------------------


class ExportFormat(StrEnum):
    """CSV with a header row, or one JSON array streamed an object a line."""

    csv = "csv"
    json = "json"


# The reader's choices come last, so that scripts reading the first five columns by position
# keep working; an empty timezone is the service's TIMEZONE.
EXPORT_COLUMNS = (
    "email",
    "name",
    "status",
    "created_at",
    "confirmed_at",
    "timezone",
    "cadence",
    "digest_weekday",
)
MEDIA_TYPES = {ExportFormat.csv: "text/csv; charset=utf-8", ExportFormat.json: "application/json"}


@dataclass(frozen=True)
class ExportedReader:
    """One reader as the export shows them (a pending reader's name is the one waiting)."""

    id: int
    email: str
    name: str
    status: str
    created_at: datetime
    confirmed_at: datetime | None
    timezone: str | None
    cadence: str
    digest_weekday: int


def export_page(
    session: Session, *, status: SubscriberStatus | None, after: int, limit: int
) -> list[ExportedReader]:
    """Up to `limit` readers with an id above `after`, in id order (keyset: as fast at the
    millionth row as at the first); erased readers are never exported (no address is left)."""
    s = _subscribers.c
    query = select(
        s.id,
        s.email,
        s.name,
        s.pending_name,
        s.status,
        s.created_at,
        s.confirmed_at,
        s.timezone,
        s.cadence,
        s.digest_weekday,
    ).where(s.status != SubscriberStatus.erased.value, s.id > after)
    if status is not None:
        query = query.where(s.status == status.value)
    rows = session.execute(query.order_by(s.id).limit(limit))
    return [
        ExportedReader(id, email, name or pending or "", state, created, confirmed, *choices)
        for id, email, name, pending, state, created, confirmed, *choices in rows
    ]


def export_pages(
    engine: Engine, *, status: SubscriberStatus | None = None, page_size: int = EXPORT_PAGE
) -> Iterator[list[ExportedReader]]:
    """Every reader (in `status`), a page at a time, each page read in its own short
    transaction: a long export never holds SQLite's lock or one PostgreSQL snapshot."""
    after = 0
    while True:
        with transaction(engine) as session:
            page = export_page(session, status=status, after=after, limit=page_size)
        if page:
            yield page
        if len(page) < page_size:
            return
        after = page[-1].id


def export_chunks(
    engine: Engine,
    *,
    status: SubscriberStatus | None = None,
    fmt: ExportFormat = ExportFormat.csv,
    page_size: int = EXPORT_PAGE,
) -> Iterator[str]:
    """The export as text, a page per chunk, for a file, stdout or a streamed HTTP response
    (MEDIA_TYPES[fmt]). CSV: header `email,name,status,created_at,confirmed_at,timezone,
    cadence,digest_weekday` (EXPORT_COLUMNS), RFC 4180 line ends. JSON: one array, an object a
    line. Times are UTC, ISO 8601 with a `Z`; no time zone is empty (CSV) or null (JSON)."""
    pages = export_pages(engine, status=status, page_size=page_size)
    return _csv_chunks(pages) if fmt == ExportFormat.csv else _json_chunks(pages)


def _csv_chunks(pages: Iterable[list[ExportedReader]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for page in pages:
        writer.writerows(
            (
                _escaped(r.email),
                _escaped(r.name),
                r.status,
                _when(r.created_at),
                _when(r.confirmed_at),
                r.timezone or "",
                r.cadence,
                r.digest_weekday,
            )
            for r in page
        )
        yield _drain(buffer)
    yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _json_chunks(pages: Iterable[list[ExportedReader]]) -> Iterator[str]:
    separator = "[\n"
    for page in pages:
        objects = []
        for r in page:
            objects.append(separator + json.dumps(_record(r), ensure_ascii=False))
            separator = ",\n"
        yield "".join(objects)
    yield "[\n]\n" if separator == "[\n" else "\n]\n"


def _record(r: ExportedReader) -> dict[str, str | int | None]:
    return {
        "email": r.email,
        "name": r.name,
        "status": r.status,
        "created_at": _when(r.created_at),
        "confirmed_at": _when(r.confirmed_at) or None,
        "timezone": r.timezone,
        "cadence": r.cadence,
        "digest_weekday": r.digest_weekday,
    }


def _escaped(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") + "Z" if moment else ""

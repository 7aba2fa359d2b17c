"""Reader lists in and out: CSV files imported in set-based batches, exports as CSV or JSON."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
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

from .clock import utcnow
from .context import AppContext
from .db import transaction
from .errors import DomainError, InvalidInput
from .mail.message import one_line
from .mail.outbox import queue_messages
from .models import Consent, Subscriber, SubscriberStatus, Suppression
from .subscriptions import clean_name, confirmation, normalize_address

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
    "rows",
)


# Reading -------------------------------------------------------------------------------


def read_csv(stream: BinaryIO) -> CsvList:
    """The rows of a UTF-8 CSV file (a BOM is fine) whose header row names an `email` column,
    and optionally `name` and `status`, in any case and order. A seekable stream is checked
    for UTF-8 first, so a bad byte at the end imports nothing. UnusableFile otherwise."""
    if stream.seekable():
        _check_utf8(stream)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        email_at, name_at, status_at, ignored = _layout(reader)
    except UnusableFile:
        text.detach()  # the binary stream is the caller's to close, not ours
        raise
    return CsvList(_rows(reader, text, email_at, name_at, status_at), ignored)


def _layout(reader: Any) -> tuple[int, int | None, int | None, tuple[str, ...]]:
    """From the header row: where the email, name and status columns are, and the headings
    of the columns we do not use."""
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
    name_at, status_at = _column(names, NAME_HEADERS), _column(names, STATUS_HEADERS)
    used = {email_at, name_at, status_at}
    return email_at, name_at, status_at, tuple(h for at, h in enumerate(header) if at not in used)


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
    reader: Any, text: io.TextIOWrapper, email_at: int, name_at: int | None, status_at: int | None
) -> Iterator[Row]:
    """Data rows, each with the line it starts on (a quoted value may span lines); entirely
    empty ones (a spreadsheet's trailing rows) are passed over."""
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
                yield Row(
                    line,
                    _cell(fields, email_at),
                    _cell(fields, name_at),
                    _cell(fields, status_at),
                )
    finally:
        with contextlib.suppress(ValueError):  # the caller closed the stream already
            text.detach()  # the binary stream is the caller's to close, not ours


def _cell(fields: list[str], at: int | None) -> str:
    return fields[at] if at is not None and at < len(fields) else ""


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
    """What the row of a valid, distinct address of one batch asks for."""

    name: str
    active: bool


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


def _checked(
    ctx: AppContext, rows: list[Row], options: ImportOptions, summary: ImportSummary
) -> _Checked:
    """Each valid address once (a repeat counts as such; its last non-empty name is kept);
    invalid rows and rows whose `status` says the reader left are counted here. No database."""
    wanted: dict[str, _Wanted] = {}
    for row in rows:
        try:
            address = normalize_address(_unescaped(row.email))
            name = clean_name(_unescaped(row.name))
            status = _row_status(row.status) if row.status else None
        except InvalidInput as exc:
            value = {"email": row.email, "name": row.name}.get(exc.field, row.status)
            summary.add_invalid(row.line, value, f"{exc.field}: {exc.message}")
            continue
        if status in LEFT:
            summary.left += 1
        elif address in wanted:
            summary.repeated += 1
            wanted[address].name = name or wanted[address].name
        else:
            # A row our own export wrote as `pending` never confirmed: it stays pending.
            active = options.confirmed and status != SubscriberStatus.pending
            wanted[address] = _Wanted(name, active)
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
    the readers already there, then multi-row writes. Returns what it counted."""
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
        elif address not in known:
            new[address] = want
        elif (change := _change(known[address], want, now)) is not None:
            changes.append(change)
        elif known[address].status in LEFT:
            summary.left += 1
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
        select(s.email, s.id, s.status, s.name, s.pending_name)
        .where(_among(session, s.email, addresses))
        .order_by(s.id)
        .with_for_update()
    )
    return {email: _Known(id, status, name, pending) for email, id, status, name, pending in rows}


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
    confirmation mail queued. An address a concurrent subscribe took meanwhile is left to it."""
    active = [{"email": a, "name": w.name} for a, w in new.items() if w.active]
    nonces = {a: secrets.token_urlsafe(9) for a, w in new.items() if not w.active}
    pending = [
        {"email": a, "pending_name": new[a].name or None, "confirm_nonce": nonce}
        for a, nonce in nonces.items()
    ]
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


EXPORT_COLUMNS = ("email", "name", "status", "created_at", "confirmed_at")
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


def export_page(
    session: Session, *, status: SubscriberStatus | None, after: int, limit: int
) -> list[ExportedReader]:
    """Up to `limit` readers with an id above `after`, in id order (keyset: as fast at the
    millionth row as at the first); erased readers are never exported (no address is left)."""
    s = _subscribers.c
    query = select(
        s.id, s.email, s.name, s.pending_name, s.status, s.created_at, s.confirmed_at
    ).where(s.status != SubscriberStatus.erased.value, s.id > after)
    if status is not None:
        query = query.where(s.status == status.value)
    rows = session.execute(query.order_by(s.id).limit(limit))
    return [
        ExportedReader(id, email, name or pending or "", state, created, confirmed)
        for id, email, name, pending, state, created, confirmed in rows
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
    (MEDIA_TYPES[fmt]). CSV: header `email,name,status,created_at,confirmed_at`, RFC 4180
    line ends. JSON: one array, an object a line. Times are UTC, ISO 8601 with a `Z`."""
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


def _record(r: ExportedReader) -> dict[str, str | None]:
    return {
        "email": r.email,
        "name": r.name,
        "status": r.status,
        "created_at": _when(r.created_at),
        "confirmed_at": _when(r.confirmed_at) or None,
    }


def _escaped(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") + "Z" if moment else ""

"""The weekly digest's sends: one per ISO week for the weekly readers, each reader due at
SEND_TIME on their weekday, and each digest holding the columns of the days before it that
the reader was not mailed already (at most seven), fixed at its first claim."""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Sequence
from dataclasses import replace
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..columns.digest import MAX_COLUMNS, prepare_digest
from ..columns.mail import PreparedMail
from ..columns.view import column_view
from ..config import Settings
from ..db import transaction
from ..models import (
    Cadence,
    ColumnRecord,
    Delivery,
    MailStatus,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
)
from . import sends, timing
from .ledger import Claim

# A digest looks this far back for columns its reader was not mailed: a week, and the week
# before for a reader who switched cadence or weekday (it still carries at most seven).
LOOK_BACK = dt.timedelta(days=14)
NOTHING_NEW = "not sent: no column this week that the reader was not mailed already"
# Deliveries that count as mailed (or about to be): a column in one is not in a digest.
_MAILED = (MailStatus.sent, MailStatus.sending, MailStatus.pending)
_WEEK_RE = re.compile(r"(\d{4})-W(\d{2})")  # as a digest send names its week, "2026-W48"


class NoDigest(LookupError):
    """A week without a column: there is no digest of it to show or mail."""

    def __init__(self, week: str) -> None:
        super().__init__(f"no column in {week}: its digest would be empty")
        self.week = week


def week_named(text: str) -> str:
    """`text` as an ISO week the way a digest send names it ("2026-w48 " gives "2026-W48");
    ValueError saying the form for anything else, or for a week the year does not have (W53
    in a 52-week year: strptime would quietly roll it into the next year) or whose Sunday is
    past the calendar's end (9999-W52)."""
    found = _WEEK_RE.fullmatch(text.strip().upper())
    try:
        if found is None:
            raise ValueError(text)
        dt.date.fromisocalendar(int(found[1]), int(found[2]), 7)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO week like 2026-W48") from None
    return found[0]


def preview_columns(session: Session, *, week: str) -> list[ColumnRecord]:
    """The columns a preview of `week`'s digest shows: those dated Monday to Sunday of that
    ISO week (one a day, so seven at most) and not cancelled, oldest first. No reader's
    history applies: a reader's own digest leaves out the columns they were already mailed
    and can reach into the week before (LOOK_BACK). NoDigest for a week without a column."""
    monday = timing.monday_of(week)
    records = session.exec(
        select(ColumnRecord)
        .where(
            col(ColumnRecord.date) >= monday,
            col(ColumnRecord.date) <= monday + dt.timedelta(days=6),
            col(ColumnRecord.cancelled_at).is_(None),
        )
        .order_by(col(ColumnRecord.date))
    ).all()
    if not records:
        raise NoDigest(week)
    return list(records)


def weekly_readers(session: Session) -> int:
    """How many active readers take the weekly digest."""
    return sends.active_readers(session, Cadence.weekly)


def send_of(session: Session, *, week: str) -> Send | None:
    """The digest send of ISO `week`, if it was started."""
    return session.exec(select(Send).where(Send.week == week)).first()


def start_week(
    session: Session, settings: Settings, week: str, now: dt.datetime
) -> tuple[Send, bool] | None:
    """The digest send of `week`, created (with its weekly readers) if it did not exist and
    anyone takes the digest; None when there is none and nobody would get it."""
    existing = send_of(session, week=week)
    if existing is not None:
        return existing, False
    if weekly_readers(session) == 0:
        return None
    return sends.start_digest(
        session, week=week, due_for=timing.digest_due(settings, week), now=now
    )


def join_week(
    session: Session, settings: Settings, subscriber: Subscriber, now: dt.datetime
) -> None:
    """A reader who just became weekly gets this week's digest on their weekday (at once if
    that has passed, carrying what they were not mailed): their row is added to the week's
    send, which is started if it was not."""
    zone = timing.zone_of(settings, subscriber.timezone)
    week = timing.week_of(now.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(zone)).date())
    started = start_week(session, settings, week, now)
    if started is None or started[1]:
        return  # nobody to mail, or the new send's snapshot took them in
    send = started[0]
    if send.status not in (SendStatus.sending, SendStatus.paused):
        return
    due, used = timing.digest_due(settings, week)(subscriber.timezone, subscriber.digest_weekday)
    reader = and_(
        col(Subscriber.id) == subscriber.id, col(Subscriber.status) == SubscriberStatus.active
    )
    added = sends.insert_rows(
        session, send.id or 0, reader, due, used, max(due, now), skip_existing=True
    )
    if added:
        session.execute(
            update(Send).where(col(Send.id) == send.id).values(total=col(Send.total) + 1)
        )


_deliveries: Table = Delivery.__table__  # type: ignore[attr-defined]
# One statement compiled once, run with one parameter set per row (executemany).
_SET_CONTENTS = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("row_id"))
    .values(contents=bindparam("chosen"))
)


def settle(session: Session, claims: Sequence[Claim], now: dt.datetime) -> list[Claim]:
    """Fix the contents of newly claimed digest rows (a retried one keeps what it had), mark
    the rows with nothing new `skipped`, and return the claims that go out, with contents."""
    fresh = [claim for claim in claims if claim.contents is None]
    chosen = _choose(session, fresh) if fresh else {}
    if chosen:
        session.execute(
            _SET_CONTENTS,
            [{"row_id": row_id, "chosen": ids} for row_id, ids in chosen.items()],
        )
    claims = [replace(c, contents=chosen.get(c.id, c.contents)) for c in claims]
    empty = [claim.id for claim in claims if not claim.contents]
    if empty:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(empty), col(Delivery.status) == MailStatus.sending)
            .values(
                status=MailStatus.skipped, lease_until=None, claimed_by=None, last_error=NOTHING_NEW
            )
        )
    return [claim for claim in claims if claim.contents]


def _choose(session: Session, claims: Sequence[Claim]) -> dict[int, str]:
    """Each claimed digest's columns, as comma-separated ids (oldest first)."""
    days = {claim.id: _local_day(claim) for claim in claims}
    first, last = min(days.values()) - LOOK_BACK, max(days.values())
    columns = session.exec(
        select(col(ColumnRecord.id), col(ColumnRecord.date)).where(
            col(ColumnRecord.date) > first,
            col(ColumnRecord.date) <= last,
            col(ColumnRecord.cancelled_at).is_(None),
        )
    ).all()
    readers = {claim.subscriber_id for claim in claims}
    mailed = _mailed(session, readers, exclude={claim.id for claim in claims})
    chosen = {}
    for claim in claims:
        day = days[claim.id]
        fresh = sorted(
            (column_date, column_id)
            for column_id, column_date in columns
            if day - LOOK_BACK < column_date <= day
            and column_id not in mailed.get(claim.subscriber_id, set())
        )[-MAX_COLUMNS:]
        chosen[claim.id] = ",".join(str(column_id) for _date, column_id in fresh)
    return chosen


def _mailed(session: Session, readers: set[int], exclude: set[int]) -> dict[int, set[int]]:
    """The columns each reader was mailed or is about to be: as a daily column, or in a
    digest (its contents)."""
    rows = session.exec(
        select(col(Delivery.subscriber_id), col(Send.column_id), col(Delivery.contents))
        .join(Send, col(Send.id) == col(Delivery.send_id))
        .where(
            col(Delivery.subscriber_id).in_(readers),
            col(Delivery.status).in_(_MAILED),
            col(Delivery.id).not_in(exclude),
        )
    ).all()
    mailed: dict[int, set[int]] = {}
    for subscriber_id, column_id, contents in rows:
        ids = mailed.setdefault(subscriber_id, set())
        if column_id is not None:
            ids.add(column_id)
        ids.update(int(part) for part in (contents or "").split(",") if part)
    return mailed


def _local_day(claim: Claim) -> dt.date:
    """The reader's date when their digest falls due: its columns end there."""
    assert claim.due_at is not None and claim.zone is not None
    return claim.due_at.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(claim.zone)).date()


class DigestMails:
    """The digests of one send, each prepared once for every reader who gets the same
    columns (readers of one weekday mostly do), safe to use from the builder threads."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._prepared: dict[str, PreparedMail] = {}
        self._lock = threading.Lock()

    def mail(self, contents: str) -> PreparedMail:
        """The prepared digest of these columns (ids, comma-separated)."""
        with self._lock:
            prepared = self._prepared.get(contents)
            if prepared is None:
                prepared = self._prepare(contents)
                self._prepared[contents] = prepared
            return prepared

    def _prepare(self, contents: str) -> PreparedMail:
        ids = [int(part) for part in contents.split(",")]
        with transaction(self.engine) as session:
            records = session.exec(select(ColumnRecord).where(col(ColumnRecord.id).in_(ids))).all()
            views = [column_view(record) for record in sorted(records, key=lambda r: r.date)]
        return prepare_digest(views, self.settings)

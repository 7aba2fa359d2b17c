"""Subscribe, confirm, unsubscribe, resubscribe: the reader's lifecycle as plain functions.

Every function takes the caller's session and only flushes; the caller commits once, so a
subscriber change and the mail announcing it (the outbox row) land together or not at all.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Table, bindparam, cast
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from .clock import known_zone, utcnow
from .context import AppContext, Requester
from .db import driver_run, driver_statement, jobs_left, run_with_batch
from .errors import AlreadyConfirmed, CannotResubscribe, InvalidInput, LinkUsed
from .limits import DAY, HOUR, Ask, counting, refuse_if_empty, take_statements, taken
from .mail import message, outbox
from .models import (
    Cadence,
    Consent,
    OutboxMail,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from .tokens import Purpose, TokenError

MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: the longest path a relay must accept
MAX_NAME = 100
MAX_ID = 2**31 - 1  # the subscribers.id column; a larger number names nobody
EPOCH = datetime(1970, 1, 1)  # naive UTC, like every datetime we store


def normalize_address(raw: str | None) -> str:
    """The address as we store it (lower case, IDN domain in ASCII), or InvalidInput. An
    address whose part before the @ is a plain dot-atom, at a domain seen valid before, is
    answered from the domain cache (an import reads a million of them); any other goes
    through email-validator, which also gives the reason a bad one is refused."""
    value = (raw or "").strip()
    local, at, domain = value.partition("@")
    known = _DOMAINS.get(domain) if at else None
    if known is not None and len(local) + known[1] <= MAX_ADDRESS and _DOT_ATOM.match(local):
        return f"{local}@{known[0]}".lower()
    return _validated(value)


def _validated(value: str) -> str:
    """normalize_address the slow way (email-validator), remembering a valid domain."""
    if not value:
        raise InvalidInput("email", "Enter your e-mail address.")
    if len(value) > MAX_ADDRESS:
        raise InvalidInput("email", f"That address is longer than {MAX_ADDRESS} characters.")
    if not message.header_safe(value):
        raise InvalidInput(
            "email", "An e-mail address cannot contain line breaks or control characters."
        )
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", str(exc)) from None
    _remember_domain(value.rpartition("@")[2], checked.domain, checked.ascii_domain)
    return (checked.ascii_email or checked.normalized).lower()


# email-validator's dot-atom (RFC 5322 3.2.3 atext, dots between): a local part of this shape
# is valid as it is, so only its domain needs the library, once per domain.
_ATEXT = r"a-zA-Z0-9_!#\$%&\'\*\+\-/=\?\^`\{\|\}~"
_DOT_ATOM = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*\\Z")
# A valid domain as typed -> (its IDNA ASCII form, the longest form's length in UTF-8 + "@"):
# email-validator checks the address's length as typed, normalised and in ASCII (<= 254).
_DOMAINS: dict[str, tuple[str, int]] = {}
MAX_CACHED_DOMAINS = 100_000  # constant memory, whatever the list: then it starts afresh


def _remember_domain(typed: str, unicode_domain: str, ascii_domain: str) -> None:
    if len(_DOMAINS) >= MAX_CACHED_DOMAINS:
        _DOMAINS.clear()
    longest = max(len(form.encode()) for form in (typed, unicode_domain, ascii_domain))
    _DOMAINS[typed] = (ascii_domain, longest + 1)


def mailbox_key(address: str) -> str:
    """One rate-limit key for the spellings of one mailbox: many providers ignore dots and
    deliver `+tag` to the same inbox, so `a.b+news@x`, `ab+x@x` and `A.B@x` are one victim.
    Only the limits use it; the stored address stays as typed."""
    local, _, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0].replace('.', '')}@{domain}"


def clean_name(raw: str | None) -> str:
    """A reader's name as we store it (one line for the To header, at most 100 characters),
    or InvalidInput: a name with a line break is refused, not silently rewritten."""
    value = (raw or "").strip()
    if len(value) > MAX_NAME:
        if not message.header_safe(value):  # the reason that matters more
            raise InvalidInput("name", "A name cannot contain line breaks or control characters.")
        raise InvalidInput("name", f"Please keep the name under {MAX_NAME} characters.")
    if value.isascii() and value.isprintable() and "  " not in value:
        return value  # what one_line() would give back: the common case, answered in C
    if not message.header_safe(value):
        raise InvalidInput("name", "A name cannot contain line breaks or control characters.")
    return message.one_line(value)


@dataclass(frozen=True)
class Choices:
    """A reader's delivery choices as stored: their zone (None: the TIMEZONE setting), the
    cadence, and the ISO weekday (1 Monday … 7 Sunday) of a weekly digest."""

    timezone: str | None = None
    cadence: Cadence = Cadence.daily
    digest_weekday: int = 7  # models.Subscriber's default


def clean_cadence(raw: str | None) -> Cadence:
    """A cadence as we store it (empty: daily), or InvalidInput."""
    value = (raw or "").strip().lower() or Cadence.daily.value
    if value not in Cadence.__members__:
        raise InvalidInput("cadence", "Choose a daily column or a weekly digest.")
    return Cadence(value)


def clean_weekday(raw: str | int | None) -> int:
    """An ISO weekday as we store it (1 Monday … 7 Sunday; empty: Sunday), or InvalidInput."""
    value = ("" if raw is None else str(raw)).strip() or str(Choices.digest_weekday)
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 7):
        raise InvalidInput("digest_weekday", "Choose a day of the week for the digest.")
    return int(value)


def choices_asked(
    *, timezone: str | None, cadence: str | None, digest_weekday: str | int | None = None
) -> Choices:
    """What a subscribe request chose, as stored: a missing or unknown zone is None (the
    TIMEZONE setting), never a guess from anything else; a bad cadence or weekday is
    InvalidInput."""
    return Choices(known_zone(timezone), clean_cadence(cadence), clean_weekday(digest_weekday))


def subscribe(
    session: Session,
    ctx: AppContext,
    *,
    email: str,
    name: str | None,
    who: Requester,
    honeypot: str | None = None,
    timezone: str | None = None,
    cadence: str | None = None,
    digest_weekday: str | int | None = None,
    now: datetime | None = None,
) -> None:
    """Start (or restart) a double opt-in. The outcome is deliberately invisible to the
    caller, so the answer never tells whether an address is known. The name waits in
    `pending_name` until the address confirms: until then it is only what a stranger typed.
    The time zone, cadence and weekday are stored for a new reader only (choices_asked):
    anyone can type anybody's address, so a known reader's choices never change here. A
    filled honeypot field (only bots see it) gets the same silence, and nothing happens."""
    if honeypot:
        return
    now = now or utcnow()
    address = normalize_address(email)
    display_name = clean_name(name)
    choices = choices_asked(timezone=timezone, cadence=cadence, digest_weekday=digest_weekday)
    pending = _Pending(address, display_name, choices, secrets.token_urlsafe(9), who, now)
    # Counted in the same transaction: a refused request rolls back what it did.
    counts = counting(_subscribe_counts(ctx, mailbox_key(address), who))
    _add_pending(session, ctx, pending, counts)


@dataclass(frozen=True)
class _Pending:
    """A subscribe request's double opt-in, as the database gets it."""

    address: str
    name: str
    choices: Choices
    nonce: str  # the confirmation link's; a new one kills the links mailed before
    who: Requester
    now: datetime

    def reader(self) -> dict[str, object]:
        """The values of _pending_insert."""
        return {
            "email": self.address,
            "pending_name": self.name or None,
            "nonce": self.nonce,
            "now": self.now,
            "timezone": self.choices.timezone,
            "cadence": self.choices.cadence.value,
            "digest_weekday": self.choices.digest_weekday,
        }

    def consent(self) -> dict[str, object]:
        """The values of a Consent row for this request, but its subscriber_id."""
        return {
            "action": "subscribe",
            "at": self.now,
            "ip": self.who.ip,
            "user_agent": (self.who.user_agent or "")[:512] or None,
            "source": self.who.source,
        }


def _subscribe_counts(
    ctx: AppContext, mailbox: str, who: Requester
) -> list[tuple[str, int, timedelta]]:
    """Per client, and per mailbox by the hour and by the day: no confirmation-mail bombing."""
    s = ctx.settings
    return [
        (f"subscribe:ip:{who.ip}", s.subscribe_per_ip_per_hour, HOUR),
        (f"subscribe:address:{mailbox}", s.subscribe_per_address_per_hour, HOUR),
        (f"subscribe:address-day:{mailbox}", s.subscribe_per_address_per_day, DAY),
    ]


def _add_pending(session: Session, ctx: AppContext, pending: _Pending, counts: list[Ask]) -> None:
    """A new pending reader at the address, with their consent and confirmation mail, or a
    known address asked again (_restart_double_opt_in); the request counted either way
    (RateLimited when a count is spent). The counts' rows stay locked on PostgreSQL until the
    commit, and so they go last."""
    if session.get_bind().dialect.name == "postgresql":
        _add_pending_at_once(session, ctx, pending, counts)
        return
    insert = _statement(session, _pending_insert("sqlite"), pending.reader(), columns=False)
    [added] = driver_run(session, [insert])
    statements = take_statements(session, counts, now=pending.now)
    if added:  # an address we did not know: its consent and mail, then the counts
        [(subscriber_id,)] = added
        confirm = confirmation(
            ctx, subscriber_id=subscriber_id, email=pending.address, nonce=pending.nonce
        )
        consent = {"subscriber_id": subscriber_id, **pending.consent()}
        [mail] = outbox.outbox_rows(ctx, [confirm])
        statements[:0] = [
            _statement(session, _CONSENT_INSERT, consent),
            _statement(session, _MAIL_INSERT, mail),
        ]
    rows = driver_run(session, statements)
    refuse_if_empty(counts, taken(rows[-len(counts) :]))
    if not added:  # taken, by a row already there or a concurrent transaction (which wins)
        _restart_double_opt_in(session, ctx, pending)


def _statement(
    session: Session, statement: Any, values: dict[str, object], *, columns: bool = True
) -> tuple[str, dict[str, object]]:
    """`statement` with `values`, for db.driver_run: a bare INSERT of `values`' columns, or
    (`columns` False) one that names its own."""
    sql, held = driver_statement(session, statement, tuple(values) if columns else None)
    return sql, {**held, **values}


def _add_pending_at_once(
    session: Session, ctx: AppContext, pending: _Pending, counts: list[Ask]
) -> None:
    """_add_pending on PostgreSQL: one statement writes the reader, the consent and the mail
    (whose link names an id drawn ahead of the row), sent with the counts and with the other
    requests' of a GroupCommit batch (db.run_with_batch). One round trip for a batch, where
    four for each request were most of what a subscribe cost (docs/BENCHMARKS.md, G6)."""
    subscriber_id = _drawn_id(session)
    confirm = confirmation(
        ctx, subscriber_id=subscriber_id, email=pending.address, nonce=pending.nonce
    )
    consent, [mail] = pending.consent(), outbox.outbox_rows(ctx, [confirm])
    statement, held = driver_statement(session, _pending_at_once(tuple(consent), tuple(mail)))
    values = {
        **held,
        "id": subscriber_id,
        **pending.reader(),
        **{f"consent_{k}": v for k, v in consent.items()},
        **{f"mail_{k}": v for k, v in mail.items()},
    }

    def then(rows: list[list[Any]]) -> None:
        added, *taken_rows = rows
        refuse_if_empty(counts, taken(taken_rows))
        if not added:  # the address is taken: no consent, no mail went in
            _restart_double_opt_in(session, ctx, pending)

    run_with_batch(
        session, [(statement, values), *take_statements(session, counts, now=pending.now)], then
    )


def _drawn_id(session: Session) -> int:
    """The id of a new reader, drawn from its sequence ahead of the INSERT; the ids of the rest
    of a GroupCommit batch are drawn with it, one statement for all. One not used (its address
    was known, its request refused) is a gap, as a conflicting INSERT leaves one."""
    drawn: list[int] = session.info.setdefault("subscriber_ids", [])
    if not drawn:
        [rows] = driver_run(session, [(_DRAW_IDS, {"n": jobs_left(session)})])
        drawn.extend(sorted((int(r[0]) for r in rows), reverse=True))
    return drawn.pop()


_DRAW_IDS = (
    "SELECT nextval(pg_get_serial_sequence('subscribers', 'id')) FROM generate_series(1, %(n)s)"
)


def _restart_double_opt_in(session: Session, ctx: AppContext, pending: _Pending) -> None:
    """A known address asked again: a new confirmation mail, or a notice to an active reader."""
    subscriber = _find(session, pending.address)
    assert subscriber is not None  # ON CONFLICT: it exists, and rows are never deleted
    if subscriber.status == SubscriberStatus.active:
        _notice_already_subscribed(session, ctx, subscriber, pending.now)
        return
    if subscriber.status != SubscriberStatus.pending or subscriber.confirm_nonce is None:
        subscriber.confirm_nonce = pending.nonce  # old confirmation links die
    subscriber.status = SubscriberStatus.pending
    subscriber.pending_name = pending.name or None
    subscriber.updated_at = pending.now
    record_consent(session, subscriber, "subscribe", pending.who, pending.now)
    _queue_confirmation(session, ctx, subscriber)


def _find(session: Session, address: str) -> Subscriber | None:
    return session.exec(select(Subscriber).where(Subscriber.email == address)).first()


@cache
def _pending_insert(dialect: str, *, drawn_id: bool = False) -> Any:
    """INSERT … ON CONFLICT (email) DO NOTHING RETURNING id, built once per dialect; with
    `drawn_id`, the id is a parameter too (_drawn_id)."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    ids: dict[str, Any] = {"id": bindparam("id")} if drawn_id else {}
    return (
        insert(_subscribers)
        .values(
            **ids,
            email=bindparam("email"),
            name="",
            pending_name=bindparam("pending_name"),
            status=SubscriberStatus.pending.value,
            confirm_nonce=bindparam("nonce"),
            created_at=bindparam("now"),
            updated_at=bindparam("now"),
            timezone=bindparam("timezone"),
            cadence=bindparam("cadence"),
            digest_weekday=bindparam("digest_weekday"),
        )
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(_subscribers.c.id)
    )


@cache
def _pending_at_once(consent: tuple[str, ...], mail: tuple[str, ...]) -> Any:
    """PostgreSQL: _pending_insert with the reader's consent and mail, each inserted only when
    the reader's row was (data-modifying CTEs). `consent` and `mail` name the columns given,
    as parameters named "consent_" and "mail_" + column."""
    reader = _pending_insert("postgresql", drawn_id=True).cte("reader")
    consents = _insert_from(_consents, reader, "consent_", consent, subscriber_id=reader.c.id)
    mails = _insert_from(_outbox, reader, "mail_", mail)
    return select(reader.c.id).add_cte(consents.cte("consent"), mails.cte("mail"))


def _insert_from(
    table: Table, reader: Any, prefix: str, columns: tuple[str, ...], **given: Any
) -> Any:
    """INSERT INTO `table` one row per row of `reader`: the `given` columns as they are, and
    `columns` from parameters named `prefix` + column, cast to the column's type."""
    values = {n: cast(bindparam(prefix + n), table.c[n].type) for n in columns}
    values.update(given)
    return sa_insert(table).from_select(list(values), select(*values.values()).select_from(reader))


_subscribers: Table = Subscriber.__table__  # type: ignore[attr-defined]
_consents: Table = Consent.__table__  # type: ignore[attr-defined]
_outbox: Table = OutboxMail.__table__  # type: ignore[attr-defined]
_CONSENT_INSERT = sa_insert(_consents)
_MAIL_INSERT = sa_insert(_outbox)


def _notice_already_subscribed(
    session: Session, ctx: AppContext, subscriber: Subscriber, now: datetime
) -> None:
    """At most one "you are already subscribed" mail per interval: no confirmation storms."""
    last = subscriber.last_notice_at
    if last is not None and now - last < ctx.settings.notice_interval:
        return
    subscriber.last_notice_at = now
    assert subscriber.id is not None
    outbox.queue(
        session,
        ctx,
        kind="already-subscribed",
        to=subscriber.email,
        to_name=subscriber.name,
        template="already_subscribed",
        name=subscriber.name,
        email=subscriber.email,
        unsubscribe_url=ctx.links.unsubscribe_url(subscriber.id),
        preferences_url=ctx.links.preferences_url(subscriber.id),
    )


def _queue_confirmation(session: Session, ctx: AppContext, subscriber: Subscriber) -> None:
    assert subscriber.id is not None and subscriber.confirm_nonce is not None
    queue_confirmation(
        session,
        ctx,
        subscriber_id=subscriber.id,
        email=subscriber.email,
        nonce=subscriber.confirm_nonce,
        to_name=subscriber.name,
    )


def queue_confirmation(
    session: Session,
    ctx: AppContext,
    *,
    subscriber_id: int,
    email: str,
    nonce: str,
    to_name: str = "",
    kind: str = "confirm",
) -> None:
    """Queue the confirmation mail of a pending reader: a link bound to their current nonce.
    `kind` "confirm" (the person asked for it) passes the suppression list; any other kind
    (an operator's import) is checked against it before it goes out."""
    mail = confirmation(
        ctx, subscriber_id=subscriber_id, email=email, nonce=nonce, kind=kind, to_name=to_name
    )
    outbox.queue_messages(session, ctx, [mail])


def confirmation(
    ctx: AppContext,
    *,
    subscriber_id: int,
    email: str,
    nonce: str,
    kind: str = "confirm",
    to_name: str = "",
) -> outbox.Outgoing:
    """The confirmation mail of a pending reader, built from the once-rendered template (no
    name in the body: whoever asked may not own the address). For queue_messages."""
    prototype = ctx.mail.prototype(
        "confirm", ("email", "confirm_url"), valid_days=ctx.settings.confirm_token_days
    )
    token = ctx.tokens.make(Purpose.confirm, f"{subscriber_id}-{nonce}")
    data = prototype.message(
        to=email, to_name=to_name, email=email, confirm_url=ctx.links.confirm_url(token)
    )
    return outbox.Outgoing(kind, email, data)


def record_consent(
    session: Session, subscriber: Subscriber, action: str, who: Requester, now: datetime
) -> None:
    """Keep the proof of one consent decision: what, when, and who asked from where."""
    assert subscriber.id is not None
    session.add(
        Consent(
            subscriber_id=subscriber.id,
            action=action,
            at=now,
            ip=who.ip,
            user_agent=(who.user_agent or "")[:512] or None,
            source=who.source,
        )
    )
    session.flush()


# Confirmation -------------------------------------------------------------------------


def pending_confirmation(session: Session, ctx: AppContext, token: str) -> Subscriber:
    """The subscriber a confirmation link would activate; changes nothing (for GET).
    Raises TokenExpired, TokenError, AlreadyConfirmed or LinkUsed."""
    payload = ctx.tokens.read(Purpose.confirm, token)
    subscriber_id, _, nonce = payload.partition("-")
    subscriber = _named(session, subscriber_id, Purpose.confirm)
    current = subscriber.confirm_nonce
    if (
        subscriber.status == SubscriberStatus.pending
        and current
        and hmac.compare_digest(current.encode(), nonce.encode())
    ):
        return subscriber
    if subscriber.status == SubscriberStatus.active:
        raise AlreadyConfirmed()
    raise LinkUsed()


def confirm(
    session: Session, ctx: AppContext, *, token: str, who: Requester, now: datetime | None = None
) -> Subscriber:
    """Activate the subscription; the link is single-use (its nonce is cleared). The name
    from the request becomes the reader's name now that the address has answered."""
    now = now or utcnow()
    subscriber = pending_confirmation(session, ctx, token)
    subscriber.name = subscriber.pending_name or subscriber.name
    subscriber.pending_name = None
    subscriber.status = SubscriberStatus.active
    subscriber.confirm_nonce = None
    subscriber.confirmed_at = now
    subscriber.updated_at = now
    lift_suppression(session, ctx, subscriber.email)  # the owner asked for mail again
    record_consent(session, subscriber, "confirm", who, now)
    return subscriber


# Unsubscribe ----------------------------------------------------------------------------


def receives_mail(subscriber: Subscriber) -> bool:
    """Whether we still write to this reader (an unsubscribe would change something)."""
    return subscriber.status in (SubscriberStatus.active, SubscriberStatus.pending)


def subscriber_for_link(
    session: Session, ctx: AppContext, token: str, purpose: Purpose
) -> Subscriber:
    """The subscriber an unsubscribe (or feedback) link names; raises TokenError/TokenExpired."""
    return _named(session, ctx.tokens.read(purpose, token), purpose)


def _named(session: Session, subscriber_id: str, purpose: Purpose) -> Subscriber:
    """The subscriber a verified token's payload names, or TokenError."""
    number = int(subscriber_id) if subscriber_id.isascii() and subscriber_id.isdigit() else 0
    subscriber = session.get(Subscriber, number) if 0 < number <= MAX_ID else None
    if subscriber is None:
        raise TokenError(purpose)
    return subscriber


def unsubscribe(
    session: Session,
    ctx: AppContext,
    *,
    token: str,
    who: Requester,
    one_click: bool = False,
    now: datetime | None = None,
) -> Subscriber:
    """Stop all mail to this reader at once. Doing it twice is fine; no goodbye mail is sent."""
    subscriber = subscriber_for_link(session, ctx, token, Purpose.unsubscribe)
    action = "one-click-unsubscribe" if one_click else "unsubscribe"
    return stop_mail(
        session, ctx, subscriber, SubscriberStatus.unsubscribed, action, who, now=now or utcnow()
    )


def stop_mail(
    session: Session,
    ctx: AppContext,
    subscriber: Subscriber,
    status: SubscriberStatus,
    action: str,
    who: Requester,
    *,
    now: datetime,
    why: str | None = None,
) -> Subscriber:
    """Stop all mail to a reader at once (unsubscribed, bounced, complained) and put the
    address on the suppression list, with a consent record saying who did it and how. A
    reader already out stays as they are; a complaint still suppresses a bounced address."""
    reason = {
        SubscriberStatus.unsubscribed: SuppressionReason.unsubscribed,
        SubscriberStatus.bounced: SuppressionReason.bounced,
        SubscriberStatus.complained: SuppressionReason.complained,
    }[status]
    suppress(session, ctx, subscriber.email, reason)
    if not receives_mail(subscriber):
        return subscriber
    subscriber.status = status
    subscriber.confirm_nonce = None
    subscriber.pending_name = None
    subscriber.updated_at = now
    if status == SubscriberStatus.unsubscribed:
        subscriber.unsubscribed_at = now
    else:
        subscriber.bounced_at = now
        subscriber.bounce_reason = (why or status.value)[:1000]
    record_consent(session, subscriber, action, who, now)
    return subscriber


def resubscribe_token(ctx: AppContext, subscriber: Subscriber) -> str | None:
    """The goodbye page's "subscribe again" token: short-lived and bound to this one
    unsubscribe. None when the reader is not unsubscribed (a bounced address stays so)."""
    if subscriber.status != SubscriberStatus.unsubscribed or subscriber.unsubscribed_at is None:
        return None
    return ctx.tokens.make(
        Purpose.resubscribe, f"{subscriber.id}-{_stamp(subscriber.unsubscribed_at)}"
    )


def resubscribe(
    session: Session, ctx: AppContext, *, token: str, who: Requester, now: datetime | None = None
) -> Subscriber:
    """Undo an unsubscribe from the goodbye page, within the token's short lifetime. That
    page answered the unsubscribe link mailed to this address, which is the proof of
    ownership a confirmation mail would ask for again. Anything else (a bounce, a
    complaint, a later change) raises CannotResubscribe and needs a fresh double opt-in."""
    now = now or utcnow()
    payload = ctx.tokens.read(Purpose.resubscribe, token)
    subscriber_id, _, stamp = payload.partition("-")
    subscriber = _named(session, subscriber_id, Purpose.resubscribe)
    if subscriber.status == SubscriberStatus.active:
        return subscriber  # the button pressed twice
    left = subscriber.unsubscribed_at
    if subscriber.status != SubscriberStatus.unsubscribed or left is None or _stamp(left) != stamp:
        raise CannotResubscribe(subscriber.email, subscriber.status)
    subscriber.status = SubscriberStatus.active
    subscriber.confirmed_at = subscriber.confirmed_at or now
    subscriber.unsubscribed_at = None
    subscriber.updated_at = now
    lift_suppression(session, ctx, subscriber.email)
    record_consent(session, subscriber, "resubscribe", who, now)
    return subscriber


def _stamp(moment: datetime) -> str:
    """Microseconds since 1970 in integers: SQLite and PostgreSQL both keep them exactly."""
    return str((moment - EPOCH) // timedelta(microseconds=1))


# The operator's actions ------------------------------------------------------------------


def unsubscribe_by_operator(
    session: Session, ctx: AppContext, subscriber_id: int, who: Requester
) -> Subscriber:
    """The operator stops all mail to a reader (asked by phone, say): the reader is
    unsubscribed and suppressed, with a consent record naming the admin door. LookupError
    for an unknown id."""
    subscriber = _by_id(session, subscriber_id)
    return stop_mail(
        session,
        ctx,
        subscriber,
        SubscriberStatus.unsubscribed,
        "admin-unsubscribe",
        who,
        now=utcnow(),
    )


class NotPending(InvalidInput):
    """Only a pending reader has a confirmation to resend."""


def resend_confirmation(
    session: Session, ctx: AppContext, subscriber_id: int, who: Requester
) -> Subscriber:
    """Mail a pending reader their confirmation link again (the same link: their nonce is
    kept, so an earlier mail's link still works). NotPending for anyone else; LookupError
    for an unknown id."""
    subscriber = _by_id(session, subscriber_id)
    if subscriber.status != SubscriberStatus.pending or subscriber.confirm_nonce is None:
        raise NotPending("status", f"The reader is {subscriber.status}, not pending.")
    _queue_confirmation(session, ctx, subscriber)
    record_consent(session, subscriber, "resend-confirmation", who, utcnow())
    return subscriber


def _by_id(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id) if 0 < subscriber_id <= MAX_ID else None
    if subscriber is None:
        raise LookupError(f"no subscriber {subscriber_id}")
    return subscriber


# Suppression ------------------------------------------------------------------------------


def suppress(session: Session, ctx: AppContext, address: str, reason: SuppressionReason) -> None:
    """Put an address on the suppression list (it keeps its first reason). Concurrent
    suppressions of one address (a bounce and a complaint at once) are fine: one row wins."""
    if suppression_of(session, ctx, address) is not None:
        return
    try:
        with session.begin_nested():
            session.add(Suppression(address_hash=ctx.tokens.address_hash(address), reason=reason))
    except IntegrityError:
        pass  # another transaction suppressed it first


def suppression_of(session: Session, ctx: AppContext, address: str) -> SuppressionReason | None:
    """Why `address` is suppressed, or None when we may write to it."""
    row = session.exec(
        select(Suppression).where(
            col(Suppression.address_hash).in_(ctx.tokens.address_hashes(address))
        )
    ).first()
    return None if row is None else SuppressionReason(row.reason)


def lift_suppression(session: Session, ctx: AppContext, address: str) -> None:
    """The owner of `address` confirmed a new subscription: mail them again."""
    session.execute(
        delete(Suppression).where(
            col(Suppression.address_hash).in_(ctx.tokens.address_hashes(address))
        )
    )

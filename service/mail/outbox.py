"""The transactional outbox: mails written with the change they announce, delivered later.

A request that changes a subscriber adds its mail to the `outbox` table with queue(), in the
same transaction, so the mail exists exactly when the change does. The sender below delivers
due rows over SMTP; a relay that is down or refuses us only delays them (retried with
backoff, no deadline: the mail goes out when SMTP is back). Rows are claimed with a lease
(OUTBOX_LEASE_SECONDS) that is renewed before the hand-offs, and every write after
the claim is conditional on still owning the row: a crashed process's rows are picked up
again, and a slow relay never lets a second process send the same mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Table, insert, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..clock import utcnow
from ..config import Settings
from ..db import transaction
from ..logs import mask_address
from ..models import MailStatus, OutboxMail, Suppression
from ..retry import next_attempt, worker_name
from ..tokens import tokens_for
from .dkim import DkimSigner
from .leases import due_or_abandoned, owned_by
from .message import build, to_bytes
from .render import MailTemplates
from .smtp import Fault, RelayHealth, SmtpConnection, SmtpFailure, SmtpTarget
from .wire import Stuffed

log = logging.getLogger(__name__)
CLAIM_LIMIT = 50
GATHER_SECONDS = 0.05  # how long a woken sender waits for more mail before its round
_outbox: Table = OutboxMail.__table__  # type: ignore[attr-defined]
_OUTBOX_INSERT = insert(_outbox)  # built once: SQLAlchemy caches its compiled form


class MailContext(Protocol):
    """What queue() needs of the application context (service.context.AppContext)."""

    @property
    def settings(self) -> Settings:
        """The settings the mail is built with."""

    @property
    def mail(self) -> MailTemplates:
        """The mail templates."""

    @property
    def dkim(self) -> DkimSigner | None:
        """The DKIM signer, when DKIM is configured."""


def queue(
    session: Session,
    ctx: MailContext,
    /,
    *,
    kind: str,
    to: str,
    template: str,
    to_name: str = "",
    reply_to: str | None = None,
    **values: object,
) -> None:
    """The one door for transactional mail: render templates/email/TEMPLATE.txt and .html with
    `values`, build the message and add it to the outbox in the caller's transaction."""
    rendered = ctx.mail.render(template, **values)
    msg = build(ctx.settings, to=to, to_name=to_name, rendered=rendered, reply_to=reply_to)
    data = to_bytes(msg)
    if ctx.dkim is not None:  # signed now: these bytes are exactly what goes out, later
        data = ctx.dkim.sign(data)
    envelope_from = ctx.settings.bounce_address
    session.add(OutboxMail(kind=kind, recipient=to, envelope_from=envelope_from, message=data))
    session.flush()


@dataclass(frozen=True)
class Outgoing:
    """A built message for the outbox: what queue_messages writes, one row each."""

    kind: str
    to: str
    message: bytes


def queue_messages(session: Session, ctx: MailContext, mails: Sequence[Outgoing]) -> None:
    """Add built messages (Prototype.message) to the outbox in the caller's transaction, in
    one multi-row INSERT; each is DKIM-signed here when DKIM is configured."""
    if mails:
        session.connection().execute(_OUTBOX_INSERT, outbox_rows(ctx, mails))


def outbox_rows(ctx: MailContext, mails: Sequence[Outgoing]) -> list[dict[str, object]]:
    """The outbox rows of built messages, due now, each DKIM-signed when DKIM is configured:
    what queue_messages inserts, for a caller that inserts them in a statement of its own."""
    now = utcnow()
    same = {
        "envelope_from": ctx.settings.bounce_address,
        "status": MailStatus.pending.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    sign = ctx.dkim.sign if ctx.dkim is not None else None
    return [
        {
            **same,
            "kind": m.kind,
            "recipient": m.to,
            "message": sign(m.message) if sign else m.message,
        }
        for m in mails
    ]


@dataclass(frozen=True)
class Claimed:
    """One claimed outbox mail, ready to hand over."""

    id: int
    kind: str
    recipient: str
    envelope_from: str
    message: bytes
    attempts: int


def claim_due(
    engine: Engine, now: datetime, *, worker: str, lease: timedelta, limit: int = CLAIM_LIMIT
) -> list[Claimed]:
    """Lease up to `limit` due rows (pending and due, or sending with an expired lease)."""
    with transaction(engine) as session:
        due = (
            select(OutboxMail)
            .where(due_or_abandoned(OutboxMail, now))
            .order_by(col(OutboxMail.next_attempt_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(session.exec(due))
        for row in rows:
            row.status = MailStatus.sending
            row.claimed_by = worker
            row.lease_until = now + lease
            row.attempts += 1
        return [
            Claimed(r.id or 0, r.kind, r.recipient, r.envelope_from, r.message, r.attempts)
            for r in rows
        ]


# Confirmation mails go even to a suppressed address: the person asked for a new subscription,
# and confirming it is what lifts the suppression.
EXEMPT_FROM_SUPPRESSION = frozenset({"confirm"})
SUPPRESSED = "not sent: the address is on the suppression list"


def renew(
    engine: Engine,
    mails: Sequence[tuple[int, Sequence[str]]],
    *,
    worker: str,
    until: datetime,
) -> set[int]:
    """Extend the leases of claimed mails before their hand-offs: `mails` are (id, the keyed
    hashes of its recipient, or none to skip the check). Returns the ids still ours to send:
    not those whose lease ran out and another process took, nor those whose recipient went on
    the suppression list since they were queued (marked skipped, never sent)."""
    with transaction(engine) as session:
        hashes = {h for _, mail_hashes in mails for h in mail_hashes}
        listed = _suppressed(session, sorted(hashes)) if hashes else set()
        skipped = {mail_id for mail_id, mail_hashes in mails if listed.intersection(mail_hashes)}
        if skipped:
            session.execute(
                update(OutboxMail)
                .where(col(OutboxMail.id).in_(sorted(skipped)), owned_by(OutboxMail, worker))
                .values(status=MailStatus.skipped, lease_until=None, claimed_by=None)
                .values(last_error=SUPPRESSED)
            )
        rest = [mail_id for mail_id, _ in mails if mail_id not in skipped]
        if not rest:
            return set()
        kept = session.execute(
            update(OutboxMail)
            .where(col(OutboxMail.id).in_(rest), owned_by(OutboxMail, worker))
            .values(lease_until=until)
            .returning(col(OutboxMail.id))
        )
        return {int(mail_id) for mail_id in kept.scalars()}


def _suppressed(session: Session, address_hashes: Sequence[str]) -> set[str]:
    found = select(Suppression.address_hash).where(
        col(Suppression.address_hash).in_(address_hashes)
    )
    return set(session.exec(found))


def _finish(engine: Engine, mail_ids: Sequence[int], worker: str, **values: object) -> None:
    with transaction(engine) as session:
        session.execute(
            update(OutboxMail)
            .where(col(OutboxMail.id).in_(mail_ids), owned_by(OutboxMail, worker))
            .values(lease_until=None, claimed_by=None, **values)
        )


class _SentMarks:
    """Marks handed-over mails sent behind the SMTP conversation: the marks of the mails
    handed over while one mark's transaction ran go together in the next. A crash between a
    hand-off and its mark sends that mail again once its lease runs out (a mail or two, where
    writing each mark before the next hand-off cost a transaction per mail)."""

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self._ids: list[int] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, mail_id: int) -> None:
        """Mark `mail_id` sent as soon as the mark before it is written."""
        self._ids.append(mail_id)
        if self._writing is not None and self._writing.done():
            await self._writing  # raises when the last mark failed
            self._writing = None
        if self._writing is None:
            self._start()

    async def flush(self) -> None:
        """Wait until every mark is written."""
        while self._writing is not None:
            await self._writing
            self._writing = None
            if self._ids:
                self._start()

    def _start(self) -> None:
        ids, self._ids = self._ids, []
        values = {"status": MailStatus.sent, "sent_at": utcnow(), "last_error": None}
        self._writing = asyncio.create_task(
            asyncio.to_thread(_finish, self.engine, ids, self.worker, **values)
        )


class OutboxSender:
    """Delivers due outbox rows; wakes on notify() or every `outbox_poll_seconds`."""

    def __init__(self, engine: Engine, settings: Settings, target: SmtpTarget) -> None:
        self.engine = engine
        self.settings = settings
        self.target = target
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.health = RelayHealth("outbox mail")
        self._stopping = False
        self.name = worker_name()
        self.lease = timedelta(seconds=settings.outbox_lease_seconds)
        self.tokens = tokens_for(settings)  # for the suppression list's keyed hashes

    def notify(self) -> None:
        """Wake the sender now (safe to call from any thread, or before it runs)."""
        if self._loop is None or self._wake is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:  # a request handler on the sender's own loop
            self._wake.set()  # no wake-up write to the loop's socket for each request
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Finish the current round and return from run()."""
        self._stopping = True
        self.notify()

    async def run(self) -> None:
        """Deliver due mail until stop(), waking on notify() or every poll interval."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not self._stopping:
            try:
                handled = await self.deliver_due()
            except Exception:  # the loop must outlive any one bad round (logged with trace)
                log.exception("outbox round failed; trying again")
                handled = 0
            if handled >= CLAIM_LIMIT:
                # A full claim: more may be due (a burst of sign-ups). Go again now, rather
                # than a claim's worth per poll interval (50 mails every 2 s drained a
                # backlog of 10,000 confirmations in over six minutes).
                continue
            # asyncio.timeout rather than wait_for: on 3.11 wait_for can swallow a cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.outbox_poll_seconds):
                    await self._wake.wait()
                    # Woken by a request: let the mails of the requests right behind it
                    # join this round, so a busy form shares one claim and one SMTP
                    # session among many mails instead of paying both for each.
                    await asyncio.sleep(GATHER_SECONDS)
            self._wake.clear()

    async def deliver_due(self, now: datetime | None = None) -> int:
        """Send what is due now; returns how many rows were handled."""
        claimed = await asyncio.to_thread(
            claim_due, self.engine, now or utcnow(), worker=self.name, lease=self.lease
        )
        if not claimed:
            return 0
        marks = _SentMarks(self.engine, self.name)
        try:
            async with SmtpConnection(self.target) as conn:
                await self._hand_over(conn, claimed, marks)
        finally:
            await marks.flush()
        return len(claimed)

    async def _hand_over(
        self, conn: SmtpConnection, claimed: list[Claimed], marks: _SentMarks
    ) -> None:
        ours: set[int] = set()
        renewed = float("-inf")
        for index, mail in enumerate(claimed):
            # Leases are renewed for the mails still to go, in one transaction, whenever a
            # quarter of the lease has passed: each hand-off starts with at least three
            # quarters of it, and OUTBOX_LEASE_SECONDS is at least 4 x SMTP_TIMEOUT.
            if asyncio.get_running_loop().time() - renewed > self.lease.total_seconds() / 4:
                renewed = asyncio.get_running_loop().time()
                ours = await asyncio.to_thread(
                    renew,
                    self.engine,
                    [(m.id, self._hashes(m)) for m in claimed[index:]],
                    worker=self.name,
                    until=utcnow() + self.lease,
                )
            if mail.id not in ours:
                continue  # suppressed meanwhile, or its lease ran out and another has it
            try:
                # Stuffed here, once, so the hand-off takes the lean path: pipelined where
                # the relay offers it, two round trips instead of sendmail()'s four.
                stuffed = Stuffed.of(mail.message)
                await conn.send(mail.envelope_from, mail.recipient, stuffed)
            except SmtpFailure as failure:
                await self._failed(mail, failure)
                if failure.connection_lost:
                    for later in claimed[index + 1 :]:
                        if later.id in ours:
                            await self._failed(later, failure)
                    return
                continue
            await marks.add(mail.id)
            self.health.succeeded()

    def _hashes(self, mail: Claimed) -> Sequence[str]:
        if mail.kind in EXEMPT_FROM_SUPPRESSION:
            return ()
        return self.tokens.address_hashes(mail.recipient)

    async def _failed(self, mail: Claimed, failure: SmtpFailure) -> None:
        """Only a refusal about the recipient's mailbox is final; a relay that refuses us
        (credentials, policy) is the operator's to fix, and the mail waits for it."""
        if failure.fault is Fault.recipient:
            log.warning(
                "outbox mail %s to %s refused for good: %s",
                mail.id,
                mask_address(mail.recipient),
                failure,
            )
            values: dict[str, object] = {"status": MailStatus.failed}
        else:
            self.health.failed(failure)
            values = {
                "status": MailStatus.pending,
                "next_attempt_at": next_attempt(
                    utcnow(),
                    mail.attempts,
                    initial=self.settings.retry_initial_seconds,
                    maximum=self.settings.retry_max_seconds,
                ),
            }
        await asyncio.to_thread(
            _finish, self.engine, [mail.id], self.name, last_error=failure.reason, **values
        )

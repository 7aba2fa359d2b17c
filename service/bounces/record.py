"""The one entry point every bounce source calls (the SMTP receiver, the IMAP poller, the
webhooks): attribute what came back to a reader, keep it, and apply what it means."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from email.message import Message

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..clock import utcnow
from ..context import AppContext, Requester
from ..models import Bounce, BounceKind, Delivery, Subscriber, SubscriberStatus
from ..subscriptions import MAX_ID, stop_mail
from ..tokens import UNSUBSCRIBE_LOCAL, Purpose, TokenError
from .report import Finding

log = logging.getLogger(__name__)
# Our signed links in the original message's headers name the reader even when a report
# redacts the recipient (most feedback loops do): /unsubscribe/TOKEN, unsubscribe+TOKEN@.
_UNSUBSCRIBE_URL_RE = re.compile(r"/unsubscribe/([A-Za-z0-9_.-]{1,240})")
_UNSUBSCRIBE_MAILTO_RE = re.compile(rf"mailto:{UNSUBSCRIBE_LOCAL}\+([0-9a-zA-Z-]{{1,30}})@")
# What each kind does to the reader, and the consent record's action.
_STOPS = {
    BounceKind.hard: (SubscriberStatus.bounced, "bounce"),
    BounceKind.complaint: (SubscriberStatus.complained, "complaint"),
    BounceKind.unsubscribe: (SubscriberStatus.unsubscribed, "mail-unsubscribe"),
}


@dataclass(frozen=True)
class Whom:
    """Who a report is about, as far as it could be told."""

    subscriber: Subscriber | None = None
    delivery_id: int | None = None


def attribute(
    session: Session,
    ctx: AppContext,
    *,
    delivery_token: str | None = None,
    email: str | None = None,
    original: Message | None = None,
) -> Whom:
    """The reader a report is about: from the VERP token (signed, names the delivery), else
    from our signed links quoted in the report, else from the address it names."""
    if delivery_token:
        try:
            delivery = session.get(
                Delivery, ctx.tokens.read_address(Purpose.bounce, delivery_token)
            )
        except TokenError:
            delivery = None
        if delivery is not None:
            return Whom(session.get(Subscriber, delivery.subscriber_id), delivery.id)
    if original is not None:
        subscriber_id = _named_in_links(ctx, original)
        if subscriber_id is not None and 0 < subscriber_id <= MAX_ID:
            return Whom(session.get(Subscriber, subscriber_id))
    if email and "\x00" not in email:  # PostgreSQL refuses a NUL in a query; none is stored
        found = session.exec(select(Subscriber).where(Subscriber.email == email.lower())).first()
        return Whom(found)
    return Whom()


def subscriber_by_mail_token(session: Session, ctx: AppContext, token: str) -> Subscriber | None:
    """The reader a List-Unsubscribe mailto: token names, or None if it is not ours."""
    try:
        number = ctx.tokens.read_address(Purpose.mail_unsubscribe, token)
    except TokenError:
        return None
    return session.get(Subscriber, number) if 0 < number <= MAX_ID else None


def record_bounce(
    session: Session,
    ctx: AppContext,
    finding: Finding,
    whom: Whom,
    *,
    source: str,
    raw_size: int = 0,
    raw: bytes | None = None,
    report_id: str | None = None,
    now: datetime | None = None,
) -> Bounce:
    """Keep one finding and apply it: a hard bounce, a complaint or an unsubscribe by mail
    stop mail to the reader at once; soft bounces do past SOFT_BOUNCE_LIMIT within
    SOFT_BOUNCE_WINDOW; policy refusals, auto-replies and the unknown change nobody. What
    names no reader is kept whole (`raw`) for the operator. A report seen before (the same
    `report_id`) is returned as it was recorded and changes nothing again."""
    now = now or utcnow()
    report_id = _text(report_id, 300)
    if report_id is not None and (seen := _seen(session, report_id)) is not None:
        return seen
    finding = replace(
        finding,
        email=_text(finding.email, 320),
        status=_text(finding.status, 16),
        diagnostic=_text(finding.diagnostic, 1000),
    )
    subscriber = whom.subscriber
    bounce = Bounce(
        received_at=now,
        source=source,
        kind=finding.kind,
        email=subscriber.email if subscriber is not None else finding.email,
        subscriber_id=subscriber.id if subscriber is not None else None,
        delivery_id=whom.delivery_id,
        status=finding.status,
        diagnostic=finding.diagnostic,
        raw_size=raw_size,
        raw=raw if subscriber is None or finding.kind is BounceKind.unknown else None,
        report_id=_text(report_id, 300),
    )
    try:
        with session.begin_nested():
            session.add(bounce)
    except IntegrityError:  # the same report, recorded by another process just now
        seen = _seen(session, report_id or "")
        assert seen is not None
        return seen
    if subscriber is None:
        log.warning(
            "a %s report (%s) names no reader; kept as bounce %s", finding.kind, source, bounce.id
        )
        return bounce
    if finding.kind is BounceKind.policy:
        log.warning(
            "a receiver refused our mail for policy reasons (%s %s): the sender's problem, "
            "no reader changed",
            finding.status,
            finding.diagnostic,
        )
    why = f"{finding.kind}: {finding.status or ''} {finding.diagnostic or ''}".strip()
    who = Requester(source=source)
    if finding.kind in _STOPS:
        status, action = _STOPS[finding.kind]
        stop_mail(session, ctx, subscriber, status, action, who, now=now, why=why)
    elif (
        finding.kind is BounceKind.soft
        and _soft_bounces(session, ctx, subscriber, now) >= ctx.settings.soft_bounce_limit
    ):
        days = ctx.settings.soft_bounce_window.days
        why = f"{ctx.settings.soft_bounce_limit} soft bounces within {days} days; last: {why}"
        stop_mail(
            session, ctx, subscriber, SubscriberStatus.bounced, "bounce", who, now=now, why=why
        )
    return bounce


def _text(value: str | None, limit: int) -> str | None:
    """A report's own words as a column can keep them: no NUL (PostgreSQL refuses it in
    text), at most `limit` characters."""
    return value.replace("\x00", "")[:limit] or None if value else None


def _seen(session: Session, report_id: str) -> Bounce | None:
    return session.exec(select(Bounce).where(Bounce.report_id == report_id)).first()


def _soft_bounces(session: Session, ctx: AppContext, subscriber: Subscriber, now: datetime) -> int:
    """Soft bounces within the window: the score, which decays as old ones leave it."""
    since = now - ctx.settings.soft_bounce_window
    return session.exec(
        select(func.count())
        .select_from(Bounce)
        .where(
            col(Bounce.subscriber_id) == subscriber.id,
            col(Bounce.kind) == BounceKind.soft,
            col(Bounce.received_at) >= since,
        )
    ).one()


def _named_in_links(ctx: AppContext, original: Message) -> int | None:
    """The subscriber id our signed unsubscribe links in the quoted headers name."""
    header = " ".join(str(original.get("list-unsubscribe", "")).split())
    mailto = _UNSUBSCRIBE_MAILTO_RE.search(header)
    if mailto:
        try:
            return ctx.tokens.read_address(Purpose.mail_unsubscribe, mailto.group(1))
        except TokenError:
            pass
    url = _UNSUBSCRIBE_URL_RE.search(header)
    if url:
        try:  # now=0: an expired link still names its reader for attribution
            payload = ctx.tokens.read(Purpose.unsubscribe, url.group(1), now=0)
        except TokenError:
            return None
        return int(payload) if payload.isdigit() else None
    return None

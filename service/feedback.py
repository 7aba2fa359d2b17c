"""The "having issues? let us know" flow: store what readers tell us, and pass it on."""

from __future__ import annotations

import unicodedata
from datetime import datetime

from sqlmodel import Session, col, select

from .clock import utcnow
from .context import AppContext, Requester
from .errors import InvalidInput
from .limits import HOUR, check_and_count
from .mail import outbox
from .models import Feedback, Subscriber
from .subscriptions import normalize_address, subscriber_for_link
from .tokens import Purpose, TokenError

# The one list of categories: the form's choices and the API's enum are made from it.
CATEGORIES = {
    "delivery": "Delivery problem",
    "commenting": "Commenting problem",
    "content": "Content",
    "other": "Other",
}


def identify(session: Session, ctx: AppContext, token: str | None) -> Subscriber | None:
    """The subscriber a feedback link from one of our mails names; None if absent or bad."""
    if not token:
        return None
    try:
        return subscriber_for_link(session, ctx, token, Purpose.feedback)
    except TokenError:
        return None


def _clean_message(raw: str | None, limit: int) -> str:
    text = (raw or "").replace("\r\n", "\n").strip()
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    if not text:
        raise InvalidInput("message", "Tell us what went wrong.")
    if len(text) > limit:
        raise InvalidInput("message", f"Please keep it under {limit} characters.")
    return text


def submit(
    session: Session,
    ctx: AppContext,
    *,
    category: str | None,
    message_text: str | None,
    reply_to: str | None,
    token: str | None,
    honeypot: str | None,
    who: Requester,
    now: datetime | None = None,
) -> Feedback | None:
    """Store one feedback; a filled honeypot field (only bots see it) is dropped silently."""
    if honeypot:
        return None
    now = now or utcnow()
    if category not in CATEGORIES:
        raise InvalidInput("category", f"Choose one of: {', '.join(CATEGORIES)}.")
    text = _clean_message(message_text, ctx.settings.feedback_max_length)
    reply = normalize_address(reply_to) if reply_to and reply_to.strip() else None
    check_and_count(
        session,
        f"feedback:ip:{who.ip}",
        limit=ctx.settings.feedback_per_ip_per_hour,
        window=HOUR,
        now=now,
    )
    subscriber = identify(session, ctx, token)
    feedback = Feedback(
        category=category,
        message=text,
        reply_to=reply,
        subscriber_id=subscriber.id if subscriber else None,
        ip=who.ip,
        user_agent=(who.user_agent or "")[:512] or None,
        created_at=now,
    )
    session.add(feedback)
    session.flush()
    if ctx.settings.feedback_notify:
        _notify_editor(session, ctx, ctx.settings.feedback_notify, feedback, subscriber)
    return feedback


def _notify_editor(
    session: Session, ctx: AppContext, to: str, feedback: Feedback, subscriber: Subscriber | None
) -> None:
    """Pass the feedback on; its Reply-To is the reader's address, so a plain reply answers."""
    outbox.queue(
        session,
        ctx,
        kind="feedback-notice",
        to=to,
        reply_to=feedback.reply_to,
        template="feedback_notice",
        category_label=CATEGORIES[feedback.category],
        message=feedback.message,
        reply_address=feedback.reply_to,
        subscriber_email=subscriber.email if subscriber else None,
        received_at=feedback.created_at.strftime("%Y-%m-%d %H:%M"),
    )


# The operator's inbox ---------------------------------------------------------------------


def inbox(
    session: Session,
    *,
    category: str | None = None,
    resolved: bool | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[Feedback]:
    """Feedback newest first, filtered by category and by whether it is resolved; pages
    by id (`before` the last id of the previous page)."""
    query = select(Feedback)
    if category is not None:
        query = query.where(col(Feedback.category) == category)
    if resolved is not None:
        resolved_at = col(Feedback.resolved_at)
        query = query.where(resolved_at.is_not(None) if resolved else resolved_at.is_(None))
    if before is not None:
        query = query.where(col(Feedback.id) < before)
    return list(session.exec(query.order_by(col(Feedback.id).desc()).limit(limit)))


def resolve(
    session: Session, feedback_id: int, *, resolved: bool = True, now: datetime | None = None
) -> Feedback:
    """Mark one feedback resolved (or open again); LookupError for an unknown id."""
    item = session.get(Feedback, feedback_id) if 0 < feedback_id < 2**31 else None
    if item is None:
        raise LookupError(f"no feedback {feedback_id}")
    item.resolved_at = (item.resolved_at or now or utcnow()) if resolved else None
    session.add(item)
    session.flush()
    return item

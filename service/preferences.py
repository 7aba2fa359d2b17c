"""The reader's own preferences page: cadence, time zone and name, their data, erasure.

Every function is reached through a preferences link (a `preferences` token naming the
reader) and only flushes; the caller commits, and re-times the reader's waiting deliveries
in the same transaction when `Changed.retimes` says so (the delivery package, which this
module does not import).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from . import readers
from .clock import known_zone, utcnow
from .config import Settings
from .context import AppContext, Requester
from .errors import DomainError, InvalidInput
from .models import Bounce, Consent, Feedback, Subscriber, SubscriberStatus
from .subscriptions import (
    clean_cadence,
    clean_name,
    clean_weekday,
    record_consent,
    subscriber_for_link,
)
from .tokens import Purpose

# The choices that decide when a reader's mail is due: changing one re-times their deliveries.
TIMING_FIELDS = frozenset({"cadence", "digest_weekday", "timezone"})
EXPORT_DELIVERIES = 100_000  # every delivery of a lifetime of daily columns, in one download
ZONE_UNKNOWN = "We do not know that time zone. Please choose one from the list."


class NotActive(DomainError):
    """Only an active reader changes preferences; `status` says where this one stands."""

    def __init__(self, status: SubscriberStatus) -> None:
        super().__init__(f"the reader is {status}, not active")
        self.status = status


@dataclass(frozen=True)
class Changed:
    """A saved preferences form: the reader as they are now, and the fields that changed."""

    subscriber: Subscriber
    fields: tuple[str, ...]

    @property
    def retimes(self) -> bool:
        """Whether the change moves when the reader's mail is due."""
        return not TIMING_FIELDS.isdisjoint(self.fields)


def reader(session: Session, ctx: AppContext, *, token: str) -> Subscriber:
    """The reader a preferences link names; changes nothing (for GET). Raises TokenError or
    TokenExpired for a link that is not one, was altered, is too old or names nobody."""
    return subscriber_for_link(session, ctx, token, Purpose.preferences)


def zone_of(settings: Settings, subscriber: Subscriber) -> str:
    """The reader's time zone: their own, or the TIMEZONE setting when they chose none."""
    return known_zone(subscriber.timezone) or settings.timezone


def change(
    session: Session,
    ctx: AppContext,
    *,
    token: str,
    who: Requester,
    cadence: str | None = None,
    digest_weekday: str | int | None = None,
    timezone: str | None = None,
    name: str | None = None,
    now: datetime | None = None,
) -> Changed:
    """Save what the preferences form sent (None: left as it is), each changed field with a
    consent record. Everything is checked before anything changes: an unknown time zone, a
    bad cadence, weekday or name is InvalidInput and nothing is saved. NotActive for a reader
    who is not active (pending, gone, erased)."""
    now = now or utcnow()
    subscriber = reader(session, ctx, token=token)
    if subscriber.status != SubscriberStatus.active:
        raise NotActive(subscriber.status)
    wanted = _wanted(
        ctx.settings,
        subscriber,
        cadence=cadence,
        digest_weekday=digest_weekday,
        timezone=timezone,
        name=name,
    )
    fields = tuple(field for field, value in wanted.items() if getattr(subscriber, field) != value)
    if not fields:
        return Changed(subscriber, ())
    for field in fields:
        setattr(subscriber, field, wanted[field])
    subscriber.updated_at = now
    session.add(subscriber)
    for field in fields:
        record_consent(session, subscriber, _consent_action(field, wanted[field]), who, now)
    return Changed(subscriber, fields)


def _wanted(
    settings: Settings,
    subscriber: Subscriber,
    *,
    cadence: str | None,
    digest_weekday: str | int | None,
    timezone: str | None,
    name: str | None,
) -> dict[str, object]:
    """Each field the form sent, as it would be stored; InvalidInput for the first bad one."""
    wanted: dict[str, object] = {}
    if cadence is not None:
        wanted["cadence"] = clean_cadence(cadence)
    if digest_weekday is not None:
        wanted["digest_weekday"] = clean_weekday(digest_weekday)
    if timezone is not None:
        wanted["timezone"] = _chosen_zone(settings, subscriber, timezone)
    if name is not None:
        wanted["name"] = clean_name(name)
    return wanted


def _chosen_zone(settings: Settings, subscriber: Subscriber, raw: str) -> str | None:
    """The zone as stored: a reader who never chose one and keeps the service's shown in the
    list stays on TIMEZONE (None), and follows it if the operator changes it."""
    zone = known_zone(raw)
    if zone is None:
        raise InvalidInput("timezone", ZONE_UNKNOWN)
    if subscriber.timezone is None and zone == known_zone(settings.timezone):
        return None
    return zone


def _consent_action(field: str, value: object) -> str:
    """What the consent trail says of one change. The cadence and the weekday are named with
    their new value; the zone and the name are not, since the trail outlives an erasure and
    they are personal data."""
    if field in ("cadence", "digest_weekday"):
        return f"preferences:{field.removeprefix('digest_')}={value}"
    return f"preferences:{field}"


def export(
    session: Session, ctx: AppContext, *, token: str, now: datetime | None = None
) -> dict[str, Any]:
    """Everything we hold about the reader, as JSON-able values: their record, consent
    records, deliveries with outcomes, bounce reports and the feedback they sent. Times are
    UTC, ISO 8601 with a `Z`. NotActive for an erased reader: nothing personal is left."""
    subscriber = reader(session, ctx, token=token)
    if subscriber.status == SubscriberStatus.erased:
        raise NotActive(subscriber.status)
    assert subscriber.id is not None
    found = readers.history(session, subscriber.id, deliveries=EXPORT_DELIVERIES)
    assert found is not None  # the link named this reader a moment ago
    return {
        "exported_at": _utc(now or utcnow()),
        "subscriber": _record(ctx.settings, subscriber),
        "consents": [_consent(c) for c in found.consents],
        "deliveries": [_delivery(d) for d in found.deliveries],
        "bounces": [_bounce(b) for b in found.bounces],
        "feedback": [_feedback(f) for f in found.feedback],
    }


def _record(settings: Settings, s: Subscriber) -> dict[str, Any]:
    return {
        "email": s.email,
        "name": s.name,
        "name_waiting_for_confirmation": s.pending_name,
        "status": str(s.status),
        "timezone": s.timezone,  # null: the service's own, shown in `timezone_in_use`
        "timezone_in_use": zone_of(settings, s),
        "cadence": str(s.cadence),
        "digest_weekday": s.digest_weekday,
        "created_at": _utc(s.created_at),
        "updated_at": _utc(s.updated_at),
        "confirmed_at": _utc(s.confirmed_at),
        "unsubscribed_at": _utc(s.unsubscribed_at),
        "bounced_at": _utc(s.bounced_at),
        "bounce_reason": s.bounce_reason,
    }


def _consent(c: Consent) -> dict[str, Any]:
    return {
        "action": c.action,
        "at": _utc(c.at),
        "source": c.source,
        "ip": c.ip,
        "user_agent": c.user_agent,
    }


def _delivery(d: readers.DeliveryLine) -> dict[str, Any]:
    return {
        "column_date": d.column_date,
        "column_title": d.column_title,
        "status": str(d.status),
        "attempts": d.attempts,
        "sent_at": _utc(d.sent_at),
        "last_error": d.last_error,
    }


def _bounce(b: Bounce) -> dict[str, Any]:
    return {
        "received_at": _utc(b.received_at),
        "kind": str(b.kind),
        "status": b.status,
        "diagnostic": b.diagnostic,
    }


def _feedback(f: Feedback) -> dict[str, Any]:
    return {
        "category": f.category,
        "message": f.message,
        "reply_to": f.reply_to,
        "sent_at": _utc(f.created_at),
        "resolved_at": _utc(f.resolved_at),
    }


def _utc(moment: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with a `Z`, like the operator's export."""
    return None if moment is None else moment.isoformat(timespec="seconds") + "Z"


def erase(
    session: Session,
    ctx: AppContext,
    *,
    token: str,
    confirmed: bool,
    who: Requester,
    now: datetime | None = None,
) -> Subscriber:
    """Erase the reader at their own request, as the operator's erasure does (readers.erase:
    personal data removed everywhere, a keyed hash of the address kept on the suppression
    list). InvalidInput unless the form's confirmation was given; erasing twice is fine."""
    subscriber = reader(session, ctx, token=token)
    if not confirmed:
        raise InvalidInput(
            "confirm", "Tick the box to confirm that all your data should be erased."
        )
    assert subscriber.id is not None
    return readers.erase(session, ctx, subscriber.id, who, now)

"""The reader's preferences page: GET shows it (mail scanners open every link, so it changes
nothing); its forms POST the choices, the data download and the erasure."""

from __future__ import annotations

import calendar
import json
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from .. import clock, preferences, subscriptions
from ..context import AppContext
from ..delivery import choices, timing
from ..errors import DomainError, InvalidInput
from ..readers import Cadence, Subscriber, SubscriberStatus
from .deps import ContextDep, RequesterDep, SessionDep
from .templating import page

router = APIRouter(include_in_schema=False)
OptionalField = Annotated[str | None, Form()]
# The page shows the reader's address and the download is all we hold about them: neither
# may be kept by a browser's or a proxy's cache.
PRIVATE = {"Cache-Control": "no-store"}
DOWNLOAD_NAME = "my-data.json"
WEEKDAYS = [(number, calendar.day_name[number - 1]) for number in range(1, 8)]


@router.api_route("/preferences/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def preferences_page(
    request: Request, token: str, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    """The reader's preferences as they are, with the forms that change them."""
    subscriber = preferences.reader(session, ctx, token=token)
    return _page(request, ctx, subscriber, token)


@router.post("/preferences/{token}", response_class=HTMLResponse)
def save(
    request: Request,
    token: str,
    session: SessionDep,
    ctx: ContextDep,
    who: RequesterDep,
    cadence: OptionalField = None,
    digest_weekday: OptionalField = None,
    timezone: OptionalField = None,
    name: OptionalField = None,
) -> HTMLResponse:
    """The preferences form's POST: save, and re-time the reader's waiting deliveries in the
    same transaction when the zone, cadence or weekday changed."""
    now = clock.now()
    try:
        changed = preferences.change(
            session,
            ctx,
            token=token,
            who=who,
            cadence=cadence,
            digest_weekday=digest_weekday,
            timezone=timezone,
            name=name,
            now=now.replace(tzinfo=None),
        )
    except (InvalidInput, preferences.NotActive) as exc:
        subscriber = preferences.reader(session, ctx, token=token)
        sent = {
            "cadence": cadence,
            "digest_weekday": digest_weekday,
            "timezone": timezone,
            "name": name,
        }
        form = {field: value[:200] for field, value in sent.items() if value is not None}
        return _page(request, ctx, subscriber, token, _status(exc), form=form, error=exc)
    if changed.retimes:
        choices.reader_changed(session, ctx.settings, changed.subscriber, now)
    return _page(request, ctx, changed.subscriber, token, saved=True)


@router.post("/preferences/{token}/data")
def download(request: Request, token: str, session: SessionDep, ctx: ContextDep) -> Response:
    """Everything we hold about the reader, as a JSON file to save."""
    try:
        data = preferences.export(session, ctx, token=token)
    except preferences.NotActive as exc:
        subscriber = preferences.reader(session, ctx, token=token)
        return _page(request, ctx, subscriber, token, _status(exc), error=exc)
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{DOWNLOAD_NAME}"', **PRIVATE},
    )


@router.post("/preferences/{token}/erase", response_class=HTMLResponse)
def erase(
    request: Request,
    token: str,
    session: SessionDep,
    ctx: ContextDep,
    who: RequesterDep,
    confirm: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """The erasure form's POST: only with its confirmation box ticked."""
    try:
        preferences.erase(session, ctx, token=token, confirmed=confirm == "erase", who=who)
    except InvalidInput as exc:
        subscriber = preferences.reader(session, ctx, token=token)
        return _page(request, ctx, subscriber, token, 422, error=exc)
    return page(request, "erased", headers=PRIVATE)


def _status(exc: DomainError) -> int:
    """422 for a field to correct; 409 (410 once erased) for a reader who cannot change."""
    if isinstance(exc, preferences.NotActive):
        return 410 if exc.status == SubscriberStatus.erased else 409
    return 422


def _page(
    request: Request,
    ctx: AppContext,
    subscriber: Subscriber,
    token: str,
    status_code: int = 200,
    *,
    form: dict[str, str] | None = None,
    error: DomainError | None = None,
    saved: bool = False,
) -> HTMLResponse:
    """The preferences page of `subscriber`: the form as sent (after an error) or as stored."""
    assert subscriber.id is not None
    stored = {
        "cadence": str(subscriber.cadence),
        "digest_weekday": str(subscriber.digest_weekday),
        "timezone": preferences.zone_of(ctx.settings, subscriber),
        "name": subscriber.name,
    }
    return page(
        request,
        "preferences",
        status_code,
        headers=PRIVATE,
        token=token,
        email=subscriber.email,
        status=str(subscriber.status),
        form={**stored, **(form or {})},
        error=error if isinstance(error, InvalidInput) else None,
        saved=saved,
        zones=clock.zone_names(),
        weekdays=WEEKDAYS,
        next_delivery=_next_delivery(ctx, subscriber),
        weekly=subscriber.cadence == Cadence.weekly,
        local_timing=timing.is_local(ctx.settings),
        send_time=f"{ctx.settings.send_time:%H:%M}",
        service_zone=ctx.settings.timezone,
        unsubscribe_url=ctx.links.unsubscribe_url(subscriber.id)
        if subscriptions.receives_mail(subscriber)
        else None,
    )


def _next_delivery(ctx: AppContext, subscriber: Subscriber) -> str:
    """When the reader's next mail is due, where they are: "Friday 27 November, 06:00
    (Europe/Berlin)"."""
    due = timing.next_delivery(
        ctx.settings,
        zone=subscriber.timezone,
        weekly=subscriber.cadence == Cadence.weekly,
        weekday=subscriber.digest_weekday,
        now=clock.now(),
    )
    at = due.at
    return f"{at:%A} {at.day} {at:%B}, {at:%H:%M} ({due.zone})"

"""Server-rendered pages for readers. A GET never changes state: mail scanners fetch every
link, so confirm and unsubscribe links show a page whose button POSTs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from .. import feedback, subscriptions
from ..errors import InvalidInput
from ..tokens import Purpose
from .deps import ContextDep, RequesterDep, SessionDep, WritesDep
from .templating import page

router = APIRouter(include_in_schema=False)
FormField = Annotated[str, Form()]
ONE_CLICK = "One-Click"  # RFC 8058 3.1: the body a mail provider POSTs


@router.get("/", response_class=HTMLResponse)
def index(request: Request, email: Annotated[str, Query(max_length=320)] = "") -> HTMLResponse:
    """The subscribe form."""
    return page(request, "index", form={"email": email, "name": "", "cadence": "", "timezone": ""})


@router.post("/subscribe", response_class=HTMLResponse)
async def subscribe(
    request: Request,
    writes: WritesDep,
    ctx: ContextDep,
    who: RequesterDep,
    email: FormField = "",
    name: FormField = "",
    website: FormField = "",
    timezone: FormField = "",
    cadence: FormField = "",
) -> HTMLResponse:
    """The subscribe form's POST: start a double opt-in. Its transaction is shared with the
    other subscribe requests of the moment (db.GroupCommit) and committed before the page is
    rendered. The time zone comes from the browser (static/timezone.js), or not at all."""
    form = {
        "email": email[:400],
        "name": name[:200],
        "cadence": cadence[:20],
        "timezone": timezone[:64],
    }
    try:
        await writes.run(
            subscriptions.subscribe,
            ctx,
            email=email,
            name=name,
            who=who,
            honeypot=website,
            timezone=timezone,
            cadence=cadence,
        )
    except InvalidInput as exc:
        return page(request, "index", 422, form=form, error=exc)
    request.app.state.outbox.notify()
    return page(request, "subscribe_sent", email=form["email"])


@router.api_route("/confirm/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def confirm_page(
    request: Request, token: str, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    """A confirmation link's page: a button, nothing changed yet."""
    subscriber = subscriptions.pending_confirmation(session, ctx, token)
    return page(request, "confirm", email=subscriber.email)


@router.post("/confirm/{token}", response_class=HTMLResponse)
def confirm(
    request: Request, token: str, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> HTMLResponse:
    """The confirmation button's POST."""
    subscriber = subscriptions.confirm(session, ctx, token=token, who=who)
    return page(request, "confirmed", email=subscriber.email)


@router.api_route("/unsubscribe/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def unsubscribe_page(
    request: Request, token: str, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    """An unsubscribe link's page: a button, nothing changed yet."""
    subscriber = subscriptions.subscriber_for_link(session, ctx, token, Purpose.unsubscribe)
    already = not subscriptions.receives_mail(subscriber)
    return page(request, "unsubscribe", email=subscriber.email, token=token, already=already)


@router.post("/unsubscribe/{token}")
async def unsubscribe(
    request: Request, token: str, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> Response:
    """The page's button and RFC 8058 one-click alike: urlencoded or multipart body, no
    cookie, no CSRF token, no redirect; 200 when done."""
    form = await request.form()
    one_click = form.get("List-Unsubscribe") == ONE_CLICK
    subscriber = subscriptions.unsubscribe(session, ctx, token=token, who=who, one_click=one_click)
    if one_click:
        return PlainTextResponse(
            f"Unsubscribed: {subscriber.email} will get no more mail from us.\n"
        )
    return page(
        request,
        "goodbye",
        email=subscriber.email,
        resubscribe_token=subscriptions.resubscribe_token(ctx, subscriber),
    )


@router.post("/resubscribe/{token}", response_class=HTMLResponse)
def resubscribe(
    request: Request, token: str, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> HTMLResponse:
    """The goodbye page's button, with the short-lived token that page was given."""
    subscriber = subscriptions.resubscribe(session, ctx, token=token, who=who)
    return page(request, "resubscribed", email=subscriber.email)


@router.post("/unsubscribe/{token}/resubscribe", response_class=HTMLResponse)
def resubscribe_by_form(
    request: Request, token: str, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    """Where older goodbye pages and the page of an address that already left post. An
    unsubscribe link lives for two years, too long to stand in for a confirmation mail,
    so this changes nothing and offers the double opt-in instead."""
    subscriber = subscriptions.subscriber_for_link(session, ctx, token, Purpose.unsubscribe)
    return page(request, "subscribe_again", email=subscriber.email, status=subscriber.status)


@router.get("/feedback", response_class=HTMLResponse)
def feedback_form(
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    t: Annotated[str, Query(max_length=400)] = "",
) -> HTMLResponse:
    """The "having issues? let us know" form, naming the reader when the link did."""
    who = feedback.identify(session, ctx, t)
    return page(
        request,
        "feedback",
        categories=feedback.CATEGORIES,
        token=t if who else "",
        subscriber_email=who.email if who else None,
        form={"category": "", "message": "", "reply_to": who.email if who else ""},
        max_length=ctx.settings.feedback_max_length,
    )


@router.post("/feedback", response_class=HTMLResponse)
def feedback_submit(
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    who: RequesterDep,
    category: FormField = "",
    message: FormField = "",
    reply_to: FormField = "",
    t: FormField = "",
    website: FormField = "",
) -> HTMLResponse:
    """The feedback form's POST."""
    try:
        feedback.submit(
            session,
            ctx,
            category=category,
            message_text=message,
            reply_to=reply_to,
            token=t,
            honeypot=website,
            who=who,
        )
    except InvalidInput as exc:
        form = {"category": category, "message": message[:20_000], "reply_to": reply_to[:400]}
        return page(
            request,
            "feedback",
            422,
            categories=feedback.CATEGORIES,
            token=t[:400],
            form=form,
            error=exc,
            subscriber_email=None,
            max_length=ctx.settings.feedback_max_length,
        )
    return page(request, "feedback_thanks")

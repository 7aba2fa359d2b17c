"""The operator's dashboard at /admin: server-rendered pages behind a password sign-in, whose
forms call the same domain functions as the admin API and answer with a redirect."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from sqlmodel import Session

from .. import (
    clock,
    feedback,
    operators,
    overview,
    preferences,
    readers,
    subscriber_files,
    subscriptions,
)
from ..columns import sources, store
from ..columns.mail import mail_size_check
from ..columns.store import ColumnFileError
from ..config import TEMPLATES_DIR, Settings
from ..db import in_thread
from ..delivery import daily, digests, sends, timing
from ..delivery.courier import Courier
from ..errors import InvalidInput, RateLimited
from ..mail import message
from ..readers import SubscriberStatus
from . import charts
from .admin_session import (
    COOKIE,
    COOKIE_PATH,
    SIGN_IN,
    SIGN_IN_COOKIE,
    FormOperatorDep,
    OperatorDep,
    clear_session_cookie,
    install_handlers,
    install_password,
    password,
    redirect,
    requester,
    safe_next,
    set_session_cookie,
    show,
    sign_in_form_matches,
    sign_in_page,
)
from .deps import ContextDep, SessionDep, SettingsDep

router = APIRouter(prefix="/admin", include_in_schema=False)
Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
FormText = Annotated[str, Form(max_length=2000)]
After = Annotated[int | None, Query(ge=0, le=2**31 - 1)]
PAGE = 50  # rows on a list page
COLUMNS_LISTED = 60
HEAD_RE = re.compile(r"<head[^>]*>", re.IGNORECASE)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the dashboard, its static files and its door on the app."""
    install_password(app, settings)
    install_handlers(app)
    app.state.templates.env.filters["local"] = local_time(settings.tz)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=TEMPLATES_DIR / "static"), name="static")


def local_time(zone: ZoneInfo) -> Callable[[dt.datetime | None], str]:
    """The template filter showing a stored (naive UTC) time in TIMEZONE."""

    def shown(moment: dt.datetime | None) -> str:
        if moment is None:
            return "—"
        aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        return aware.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

    return shown


def _missing(what: str) -> HTTPException:
    return HTTPException(404, f"There is no such {what}.")


def _courier(request: Request) -> Courier:
    state = request.app.state
    return Courier(state.engine, state.ctx, state.smtp_target)


def _interval(span: dt.timedelta) -> str:
    seconds = round(span.total_seconds())
    if seconds % 60:
        return f"{seconds} seconds"
    return "1 minute" if seconds == 60 else f"{seconds // 60} minutes"


# Sign-in ----------------------------------------------------------------------------------


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(
    request: Request, next_url: Annotated[str, Query(alias="next", max_length=500)] = ""
) -> Response:
    """The password form (or straight on, for an operator already signed in)."""
    password(request)
    token = request.cookies.get(COOKIE, "")
    signed_in = await in_thread(request.app.state.engine, operators.session_for, token)
    if signed_in is not None:
        return redirect(safe_next(next_url))
    return sign_in_page(request, next_url=next_url)


@router.post("/sign-in")
def sign_in(
    request: Request,
    settings: SettingsDep,
    given: Annotated[str, Form(alias="password", max_length=1024)] = "",
    csrf: FormText = "",
    next_url: Annotated[str, Form(alias="next", max_length=500)] = "",
) -> Response:
    """Check the password (attempts per IP are limited) and open a session."""
    check = password(request)
    if not sign_in_form_matches(request, csrf):
        return sign_in_page(request, 403, next_url=next_url, error="The form expired; try again.")
    try:
        signed_in = operators.sign_in(
            request.app.state.engine,
            check,
            given,
            who=requester(request),
            hours=settings.admin_session_hours,
        )
    except RateLimited as exc:
        minutes = max(1, round(exc.retry_after / 60))
        return sign_in_page(
            request,
            429,
            next_url=next_url,
            error=f"Too many sign-in attempts from your address; try again in {minutes} min.",
            headers={"Retry-After": str(exc.retry_after)},
        )
    except operators.WrongPassword:
        return sign_in_page(
            request, 401, next_url=next_url, error="That is not the dashboard's password."
        )
    response = redirect(safe_next(next_url))
    set_session_cookie(response, signed_in, settings)
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/sign-out")
def sign_out(
    request: Request, _operator: FormOperatorDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """End the session for good: its cookie opens nothing any more."""
    operators.sign_out(session, request.cookies.get(COOKIE, ""))
    response = redirect(SIGN_IN)
    clear_session_cookie(response, settings)
    return response


# Overview and sends -----------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def overview_page(
    request: Request, operator: OperatorDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Readers by status, the latest send live, the next sends, 90 days in charts."""
    today = clock.utcnow().date()
    grown = overview.growth(session, today)
    sent = overview.sent_per_day(session, today)
    figures = [
        ("Active readers at the end of each day", charts.line, grown.active),
        ("Readers who confirmed each day", charts.bars, grown.joined),
        ("Readers who left each day", charts.bars, grown.left),
        ("Column mails sent each day", charts.bars, sent),
    ]
    return show(
        request,
        operator,
        "overview",
        readers=overview.readers_by_status(session),
        latest=overview.latest_send(session),
        upcoming=overview.next_sends(session, settings, clock.now()),
        charts=[(label, draw(label, grown.days, values)) for label, draw, values in figures],
        totals={"joined": sum(grown.joined), "left": sum(grown.left), "sent": sum(sent)},
    )


@router.get("/sends", response_class=HTMLResponse)
def sends_page(
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """The latest sends with their counts."""
    listed = sends.latest(session, PAGE, before=before)
    older = listed[-1].id if len(listed) == PAGE else None
    return show(request, operator, "sends", sends=listed, older=older)


@router.get("/sends/{send_id}", response_class=HTMLResponse)
def send_page(
    request: Request,
    send_id: Id,
    operator: OperatorDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """One send, its counts kept current by the page's script."""
    summary = sends.summary(session, send_id)
    if summary is None:
        raise _missing("send")
    return show(
        request, operator, "send", send=summary, resume_every=_interval(settings.resume_interval)
    )


@router.get("/sends/{send_id}/live.json")
def send_live(send_id: Id, _operator: OperatorDep, session: SessionDep) -> JSONResponse:
    """A send's counts for the live panel's script (the dashboard session, not the token)."""
    summary = sends.summary(session, send_id)
    if summary is None:
        raise _missing("send")
    return JSONResponse(live_counts(summary), headers={"Cache-Control": "no-store"})


def live_counts(summary: sends.SendSummary) -> dict[str, Any]:
    """What the live panel shows, by the names of its fields."""
    counts = summary.counts
    return {
        "id": summary.id,
        "status": summary.status,
        "readers": summary.readers,
        "sent": counts.sent,
        "deferred": summary.deferred,
        "failed": counts.failed,
        "skipped": counts.skipped,
        "remaining": counts.pending,
        "handled": counts.sent + counts.failed + counts.skipped,
        "rate": summary.rate,
        "pause_reason": summary.pause_reason or "",
    }


SEND_ACTIONS: dict[str, tuple[Callable[[Session, int], object], str]] = {
    "pause": (sends.pause_by_operator, "Paused: hand-offs in progress finish, no more go out."),
    "resume": (sends.resume_by_operator, "Resumed: sending goes on within {every}."),
    "cancel": (sends.cancel, "Cancelled: nobody not yet handed the column will get it."),
}


@router.post("/sends/{send_id}/{action}")
def change_send(
    send_id: Id,
    action: Literal["pause", "resume", "cancel"],
    _operator: FormOperatorDep,
    session: SessionDep,
    settings: SettingsDep,
    back: FormText = "",
) -> Response:
    """Pause, resume or cancel a send, as POST /api/v1/admin/sends/{id}/… does."""
    change, done = SEND_ACTIONS[action]
    target = safe_next(back) if back else f"/admin/sends/{send_id}"
    try:
        change(session, send_id)
    except LookupError:
        raise _missing("send") from None
    except sends.SendStateError as exc:
        return redirect(target, str(exc), error=True)
    return redirect(target, done.format(every=_interval(settings.resume_interval)))


# Readers ----------------------------------------------------------------------------------


def _status(value: str) -> SubscriberStatus | None:
    return SubscriberStatus(value) if value in SubscriberStatus._value2member_map_ else None


@router.get("/subscribers", response_class=HTMLResponse)
def subscribers_page(
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    q: Annotated[str, Query(max_length=200)] = "",
    status: Annotated[str, Query(max_length=20)] = "",
    after: After = None,
) -> Response:
    """Readers found by part of their address or name and by status, a page at a time."""
    rows = readers.find(
        session, q=q.strip() or None, status=_status(status), after=after, limit=PAGE
    )
    return show(
        request,
        operator,
        "subscribers",
        rows=rows,
        q=q,
        status=status,
        statuses=[s.value for s in SubscriberStatus],
        next_after=rows[-1].id if len(rows) == PAGE else None,
    )


@router.get("/subscribers/export")
def export_subscribers(
    request: Request,
    _operator: OperatorDep,
    fmt: Annotated[subscriber_files.ExportFormat, Query(alias="format")] = (
        subscriber_files.ExportFormat.csv
    ),
    status: Annotated[str, Query(max_length=20)] = "",
) -> StreamingResponse:
    """Every reader (in a status) as CSV or JSON, streamed a page at a time."""
    chosen = _status(status)
    chunks = subscriber_files.export_chunks(request.app.state.engine, status=chosen, fmt=fmt)
    name = f"readers-{chosen.value if chosen else 'all'}-{clock.utcnow():%Y-%m-%d}.{fmt.value}"
    return StreamingResponse(
        chunks,
        media_type=subscriber_files.MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/subscribers/import", response_class=HTMLResponse)
def import_form(request: Request, operator: OperatorDep) -> Response:
    """The CSV upload form."""
    return show(request, operator, "import", summary=None, error=None, form={})


@router.post("/subscribers/import", response_class=HTMLResponse)
def import_subscribers(
    request: Request,
    operator: FormOperatorDep,
    ctx: ContextDep,
    upload: Annotated[UploadFile, File(alias="file")],
    confirmed: FormText = "",
    consent_source: FormText = "",
) -> Response:
    """Import an uploaded CSV file (spooled to a temporary file as it arrives) in batches,
    as `broadside subscribers import` does, and show what it did."""
    vouched = confirmed == "yes"
    form = {"confirmed": vouched, "consent_source": consent_source}
    name = upload.filename or "upload.csv"
    try:
        summary = subscriber_files.import_csv(
            request.app.state.engine,
            ctx,
            upload.file,
            file_name=name,
            confirmed=vouched,
            consent_source=consent_source,
        )
    except (subscriber_files.UnusableFile, InvalidInput) as exc:
        error = exc.message if isinstance(exc, InvalidInput) else str(exc)
        return show(request, operator, "import", 422, summary=None, error=error, form=form)
    request.app.state.outbox.notify()  # confirmation mails for the new pending readers
    return show(request, operator, "import", summary=summary, error=None, form=form, file_name=name)


@router.get("/subscribers/{subscriber_id}", response_class=HTMLResponse)
def subscriber_page(
    request: Request,
    subscriber_id: Id,
    operator: OperatorDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """One reader's history: consents, deliveries, bounces, feedback; the delivery choices
    they made (shown, not changed: they are the reader's); and what to do."""
    found = readers.history(session, subscriber_id)
    if found is None:
        raise _missing("reader")
    return show(
        request,
        operator,
        "subscriber",
        reader=found.subscriber,
        history=found,
        receives_mail=subscriptions.receives_mail(found.subscriber),
        zone_in_use=preferences.zone_of(settings, found.subscriber),
        digest_day=calendar.day_name[found.subscriber.digest_weekday - 1],
    )


@router.post("/subscribers/{subscriber_id}/unsubscribe")
def unsubscribe_subscriber(
    request: Request,
    subscriber_id: Id,
    _operator: FormOperatorDep,
    session: SessionDep,
    ctx: ContextDep,
) -> Response:
    """Stop all mail to the reader at once (and suppress the address)."""
    try:
        subscriptions.unsubscribe_by_operator(session, ctx, subscriber_id, requester(request))
    except LookupError:
        raise _missing("reader") from None
    return redirect(f"/admin/subscribers/{subscriber_id}", "Unsubscribed: no more mail goes out.")


@router.post("/subscribers/{subscriber_id}/resend-confirmation")
def resend_confirmation(
    request: Request,
    subscriber_id: Id,
    _operator: FormOperatorDep,
    session: SessionDep,
    ctx: ContextDep,
) -> Response:
    """Mail a pending reader their confirmation link again."""
    back = f"/admin/subscribers/{subscriber_id}"
    try:
        subscriptions.resend_confirmation(session, ctx, subscriber_id, requester(request))
    except LookupError:
        raise _missing("reader") from None
    except subscriptions.NotPending as exc:
        return redirect(back, exc.message, error=True)
    return redirect(back, "The confirmation mail is on its way again.")


@router.post("/subscribers/{subscriber_id}/erase")
def erase_subscriber(
    request: Request,
    subscriber_id: Id,
    _operator: FormOperatorDep,
    session: SessionDep,
    ctx: ContextDep,
    confirm: FormText = "",
) -> Response:
    """Erase the reader's personal data (the box must be ticked: it cannot be undone)."""
    back = f"/admin/subscribers/{subscriber_id}"
    if confirm != "yes":
        return redirect(back, "Nothing erased: tick the box to confirm.", error=True)
    try:
        readers.erase(session, ctx, subscriber_id, requester(request))
    except LookupError:
        raise _missing("reader") from None
    return redirect(back, "Erased: only a keyed hash of the address is kept.")


# Columns ----------------------------------------------------------------------------------


def _columns_listing(session: Session) -> list[tuple[Any, Any]]:
    return [
        (record, sends.for_column(session, record.id or 0))
        for record in store.latest(session, COLUMNS_LISTED)
    ]


@router.get("/columns", response_class=HTMLResponse)
def columns_page(request: Request, operator: OperatorDep, session: SessionDep) -> Response:
    """The latest columns with their schedule and send, and the upload form."""
    return show(request, operator, "columns", columns=_columns_listing(session), error=None)


@router.post("/columns", response_class=HTMLResponse)
async def upload_column(
    request: Request,
    operator: FormOperatorDep,
    settings: SettingsDep,
    upload: Annotated[UploadFile | None, File(alias="file")] = None,
    text: Annotated[str, Form(max_length=sources.MAX_COLUMN_BYTES)] = "",
    fmt: Annotated[Literal["worldview", "markdown"], Form(alias="format")] = "worldview",
    date: FormText = "",
) -> Response:
    """Add or edit a column from a file or pasted text, as POST /api/v1/admin/columns does."""
    engine = request.app.state.engine
    try:
        name, source, day = await _column_source(upload, text, date)
        outcome = await in_thread(
            engine,
            sources.import_text,
            source,
            fmt=fmt,
            date=day,
            name=name,
            check=mail_size_check(settings),
        )
    except ColumnFileError as exc:
        listing = await in_thread(engine, _columns_listing)
        return show(request, operator, "columns", 422, columns=listing, error=str(exc))
    back = f"/admin/columns/{outcome.column_id}"
    if outcome.action == "locked":
        return redirect(back, f"The column of {outcome.date} has started sending.", error=True)
    return redirect(back, f"Column of {outcome.date} {outcome.action}.")


async def _column_source(
    upload: UploadFile | None, text: str, date: str
) -> tuple[str, str, dt.date | None]:
    """The upload's name, text and date (typed, else from the file name); ColumnFileError
    for a file too large, not UTF-8, missing, or a date that is not one."""
    name = "dashboard"
    if upload is not None and upload.filename:
        name = upload.filename[:200]
        data = await upload.read(sources.MAX_COLUMN_BYTES + 1)
        if len(data) > sources.MAX_COLUMN_BYTES:
            raise ColumnFileError(name, "larger than 1 MB")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ColumnFileError(name, "not UTF-8 text; save it as UTF-8") from None
    if not text.strip():
        raise ColumnFileError(name, "choose a file or paste the column's text")
    try:
        day = dt.date.fromisoformat(date.strip()) if date.strip() else None
    except ValueError:
        raise ColumnFileError(name, f"{date[:20]!r} is not a date (YYYY-MM-DD)") from None
    return name, text, day or sources.date_from_name(name)


@router.get("/columns/{column_id}", response_class=HTMLResponse)
def column_page(
    request: Request,
    column_id: Id,
    operator: OperatorDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """One column: the exact mail a reader gets, a test copy, its schedule and its send."""
    record = store.column_by_id(session, column_id)
    if record is None:
        raise _missing("column")
    data = daily.reader_copy(
        _courier(request), record, to="reader@example.com", name="Reader", subscriber_id=0
    )
    shown = message.read_back(data)
    at = record.send_at
    local = at.replace(tzinfo=dt.UTC).astimezone(settings.tz) if at is not None else None
    return show(
        request,
        operator,
        "column",
        column=record,
        send=sends.for_column(session, column_id),
        readers=sends.active_readers(session),
        preview=shown,
        html=_framed(shown.html),
        size=len(data),
        send_at_value=local.strftime("%Y-%m-%dT%H:%M") if local else "",
        send_time=daily.send_moment(settings, record.date),
        resume_every=_interval(settings.resume_interval),
    )


def _framed(html: str) -> str:
    """A mail's HTML for the preview frame: its links open in a new window."""
    return HEAD_RE.sub(lambda m: m.group(0) + '<base target="_blank">', html, count=1)


@router.post("/columns/{column_id}/test")
async def test_copy(
    request: Request, column_id: Id, _operator: FormOperatorDep, to: FormText = ""
) -> Response:
    """Mail one test copy, as POST /api/v1/admin/columns/{id}/test does; no reader changes."""
    back = f"/admin/columns/{column_id}"
    try:
        address = subscriptions.normalize_address(to)
    except InvalidInput as exc:
        return redirect(back, f"No test copy sent: {exc.message}", error=True)
    record = await in_thread(request.app.state.engine, store.column_by_id, column_id)
    if record is None:
        raise _missing("column")
    reply = await daily.send_test_copy(_courier(request), record, address)
    if reply is not None:
        return redirect(back, f"The relay did not take the test copy: {reply}", error=True)
    return redirect(back, f"Test copy sent to {address}.")


@router.post("/columns/{column_id}/schedule")
def schedule_column(
    column_id: Id,
    _operator: FormOperatorDep,
    session: SessionDep,
    settings: SettingsDep,
    action: Annotated[Literal["at", "default", "cancel"], Form()] = "default",
    send_at: FormText = "",
) -> Response:
    """Send at a chosen time, at SEND_TIME, or not at all, as PATCH /api/v1/admin/columns
    does (until its send starts)."""
    back = f"/admin/columns/{column_id}"
    moment = None
    if action == "at":
        try:
            chosen = dt.datetime.fromisoformat(send_at.strip())
        except ValueError:
            return redirect(back, "Nothing changed: give a date and a time.", error=True)
        aware = chosen if chosen.tzinfo else chosen.replace(tzinfo=settings.tz)
        moment = aware.astimezone(dt.UTC).replace(tzinfo=None)
    try:
        store.schedule(session, column_id, send_at=moment, cancelled=action == "cancel")
    except LookupError:
        raise _missing("column") from None
    except store.ColumnLocked as exc:
        return redirect(back, f"{exc}: it can no longer be rescheduled.", error=True)
    done = {
        "at": "Rescheduled.",
        "default": f"It goes out at SEND_TIME ({settings.send_time:%H:%M}) on its date.",
        "cancel": "Cancelled: this column will not be sent.",
    }
    return redirect(back, done[action])


@router.post("/columns/{column_id}/send")
async def send_now(
    request: Request, column_id: Id, _operator: FormOperatorDep, settings: SettingsDep
) -> Response:
    """Start the column's send now: the active readers are snapshotted at once, and the
    running `serve`/`worker` processes deliver it (picked up within RESUME_INTERVAL)."""
    engine = request.app.state.engine
    back = f"/admin/columns/{column_id}"
    try:
        send, created = await asyncio.to_thread(daily.start_now, engine, settings, column_id)
    except LookupError:
        raise _missing("column") from None
    except daily.ColumnNotSendable as exc:
        return redirect(back, str(exc), error=True)
    every = _interval(settings.resume_interval)
    done = (
        f"Send started for {send.total} readers; delivery begins within {every}."
        if created
        else "This column's send had already started."
    )
    return redirect(f"/admin/sends/{send.id}", done)


# Digests ----------------------------------------------------------------------------------

WeekText = Annotated[str, Path(max_length=20)]


@router.get("/digests")
def digest_of_week(
    request: Request,
    operator: OperatorDep,
    settings: SettingsDep,
    week: Annotated[str, Query(max_length=20)] = "",
) -> Response:
    """The week picker's target (an <input type=week> sends "2026-W48"): that week's digest
    page, or this week's when none is given."""
    if not week.strip():
        return redirect(f"/admin/digests/{daily.current_week(settings, clock.now())}")
    try:
        return redirect(f"/admin/digests/{digests.week_named(week)}")
    except ValueError as exc:
        return show(request, operator, "digest", 422, week=week, error=f"{exc}.")


@router.get("/digests/{week}", response_class=HTMLResponse)
def digest_page(
    request: Request, week: WeekText, operator: OperatorDep, session: SessionDep
) -> Response:
    """A week's digest as a weekly reader gets it, from the columns dated in that week (no
    reader's history), its send if it started, and a test copy; 422 or 404 with the week
    picker for a week that is not one or has no column."""
    try:
        named = digests.week_named(week)
        columns = digests.preview_columns(session, week=named)
    except digests.NoDigest as exc:
        return show(request, operator, "digest", 404, week=week, error=f"There is {exc}.")
    except ValueError as exc:
        return show(request, operator, "digest", 422, week=week, error=f"{exc}.")
    data = daily.digest_copy(
        _courier(request), named, columns, to="reader@example.com", name="Reader", subscriber_id=0
    )
    shown = message.read_back(data)
    monday = timing.monday_of(named)
    return show(
        request,
        operator,
        "digest",
        week=named,
        error=None,
        monday=monday,
        sunday=monday + dt.timedelta(days=6),
        columns=columns,
        send=digests.send_of(session, week=named),
        readers=digests.weekly_readers(session),
        preview=shown,
        html=_framed(shown.html),
        size=len(data),
    )


@router.post("/digests/{week}/test")
async def test_digest(
    request: Request, week: WeekText, _operator: FormOperatorDep, to: FormText = ""
) -> Response:
    """Mail one test copy of the week's digest, as POST /api/v1/admin/digests/{week}/test
    does; no reader changes and no send is made."""
    back = f"/admin/digests/{quote(week, safe='')}"
    try:
        address = subscriptions.normalize_address(to)
        named = digests.week_named(week)
        columns = await asyncio.to_thread(daily.digest_columns, request.app.state.engine, named)
    except InvalidInput as exc:
        return redirect(back, f"No test copy sent: {exc.message}", error=True)
    except (ValueError, LookupError) as exc:  # not a week, or digests.NoDigest
        return redirect(back, f"No test copy sent: {exc}.", error=True)
    reply = await daily.send_digest_test_copy(_courier(request), named, columns, address)
    if reply is not None:
        return redirect(back, f"The relay did not take the test copy: {reply}", error=True)
    return redirect(back, f"Test copy sent to {address}.")


# Feedback ---------------------------------------------------------------------------------

FEEDBACK_STATES = {"open": False, "resolved": True, "all": None}


@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    category: Annotated[str, Query(max_length=20)] = "",
    state: Literal["open", "resolved", "all"] = "open",
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """What readers reported, newest first."""
    chosen = category if category in feedback.CATEGORIES else None
    items = feedback.inbox(
        session, category=chosen, resolved=FEEDBACK_STATES[state], before=before, limit=PAGE
    )
    return show(
        request,
        operator,
        "feedback",
        items=items,
        categories=feedback.CATEGORIES,
        category=chosen or "",
        state=state,
        older=items[-1].id if len(items) == PAGE else None,
    )


@router.post("/feedback/{feedback_id}/{action}")
def change_feedback(
    feedback_id: Id,
    action: Literal["resolve", "reopen"],
    _operator: FormOperatorDep,
    session: SessionDep,
    back: FormText = "",
) -> Response:
    """Mark feedback resolved or open again, as the admin API does."""
    try:
        feedback.resolve(session, feedback_id, resolved=action == "resolve")
    except LookupError:
        raise _missing("feedback") from None
    done = "Marked resolved." if action == "resolve" else "Open again."
    return redirect(safe_next(back) if back else "/admin/feedback", done)

"""Operator endpoints under /api/v1/admin, behind the ADMIN_TOKEN bearer credential."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlmodel import Session

from .. import feedback, preferences, readers, subscriptions
from ..columns import sources, store
from ..columns.mail import mail_size_check
from ..columns.store import ColumnRecord
from ..config import Settings
from ..db import in_thread
from ..delivery import daily, digests, sends
from ..delivery.courier import Courier
from ..mail import message
from ..readers import Cadence, Subscriber, SubscriberStatus
from .deps import ContextDep, RequesterDep, SessionDep, SettingsDep
from .errors import EDGE_RESPONSES, Problem

bearer = HTTPBearer(auto_error=False, description="BROADSIDE_ADMIN_TOKEN")


def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Let the request through only with the admin token (401), and only if one is set (503)."""
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not expected:
        raise HTTPException(503, "The admin API is off: set BROADSIDE_ADMIN_TOKEN to turn it on.")
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "A valid admin token is required.", {"WWW-Authenticate": "Bearer"})


router = APIRouter(
    prefix="/api/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        **EDGE_RESPONSES,
        401: {"model": Problem, "description": "no or a wrong admin token"},
        404: {"model": Problem, "description": "no such subscriber, send, column or feedback"},
        503: {"model": Problem, "description": "the admin API is off, or the database is down"},
    },
)
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "not possible in the current state"}
}
Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
# The database keeps naive UTC; an answer says so (RFC 3339 wants the offset).
Moment = Annotated[
    dt.datetime, AfterValidator(lambda v: v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v)
]
Limit = Annotated[int, Query(ge=1, le=500)]


def _missing(what: str) -> HTTPException:
    return HTTPException(404, f"No such {what}.")


class ColumnIn(BaseModel):
    """A column posted by an editor."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1_000_000, description="the column's source")
    format: Literal["worldview", "markdown"] = "worldview"
    date: dt.date | None = Field(
        default=None, description="required unless the front matter has one"
    )
    name: str = Field(default="api", max_length=200, description="where it came from, for the log")


class ColumnOut(BaseModel):
    """What storing a posted column did."""

    id: int
    slug: str
    date: dt.date
    action: Literal["created", "updated", "unchanged", "locked"]
    url: str


@router.post(
    "/columns",
    response_model=ColumnOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "updated or unchanged"},
        409: {"description": "already sending"},
        422: {"description": "cannot be parsed, or too large to mail"},
    },
)
def post_column(
    body: ColumnIn, session: SessionDep, settings: SettingsDep, response: Response
) -> ColumnOut:
    """Add or edit a column (World View text or Markdown with front matter). Posting the same
    column again changes nothing; an edit replaces the stored column until its send starts."""
    outcome = sources.import_text(
        session,
        body.text,
        fmt=body.format,
        date=body.date,
        name=body.name,
        check=mail_size_check(settings),
    )
    if outcome.action == "locked":
        raise HTTPException(
            409, f"The column for {outcome.date} has started sending; it can no longer change."
        )
    if outcome.action != "created":
        response.status_code = status.HTTP_200_OK
    return ColumnOut(
        id=outcome.column_id,
        slug=outcome.slug,
        date=outcome.date,
        action=outcome.action,
        url=f"{settings.base_url}/columns/{outcome.slug}",
    )


# Subscribers ------------------------------------------------------------------------------


class SubscriberOut(BaseModel):
    """A reader as the operator sees them, with the delivery choices they made (theirs to
    change, on their preferences page)."""

    id: int
    email: str
    name: str
    status: SubscriberStatus
    created_at: Moment
    confirmed_at: Moment | None
    unsubscribed_at: Moment | None
    bounced_at: Moment | None
    bounce_reason: str | None
    timezone: str | None = Field(
        description="the IANA time zone the reader chose; null: the service's TIMEZONE"
    )
    timezone_in_use: str = Field(description="their zone, or TIMEZONE when they chose none")
    cadence: Cadence = Field(description="the daily column, or a weekly digest")
    digest_weekday: int = Field(
        ge=1, le=7, description="the ISO weekday of a weekly digest: 1 Monday … 7 Sunday"
    )


class SubscriberPage(BaseModel):
    """One page of readers; pass `next_after` as `after` for the next one (null: the end)."""

    items: list[SubscriberOut]
    next_after: int | None


class ConsentOut(BaseModel):
    """One consent decision."""

    at: Moment
    action: str
    source: str
    ip: str | None
    user_agent: str | None


class DeliveryOut(BaseModel):
    """One column delivery and its outcome."""

    send_id: int
    column_date: str
    column_title: str
    status: str
    attempts: int
    sent_at: Moment | None
    last_error: str | None


class BounceOut(BaseModel):
    """One bounce, complaint or unsubscribe by mail."""

    received_at: Moment
    source: str
    kind: str
    status: str | None
    diagnostic: str | None
    delivery_id: int | None


class FeedbackOut(BaseModel):
    """One feedback form."""

    id: int
    category: str
    message: str
    reply_to: str | None
    subscriber_id: int | None
    created_at: Moment
    resolved_at: Moment | None


class SubscriberDetail(SubscriberOut):
    """A reader with their whole history."""

    consents: list[ConsentOut]
    deliveries: list[DeliveryOut]
    bounces: list[BounceOut]
    feedback: list[FeedbackOut]


def _subscriber(row: Subscriber, settings: Settings) -> SubscriberOut:
    shown = {name: getattr(row, name, None) for name in SubscriberOut.model_fields}
    shown["timezone_in_use"] = preferences.zone_of(settings, row)
    return SubscriberOut.model_validate(shown)


@router.get("/subscribers", response_model=SubscriberPage)
def list_subscribers(
    session: SessionDep,
    settings: SettingsDep,
    email: Annotated[str | None, Query(max_length=320, description="exact, normalised")] = None,
    q: Annotated[str | None, Query(max_length=200, description="part of address or name")] = None,
    status_: Annotated[SubscriberStatus | None, Query(alias="status")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="the last id seen")] = None,
    limit: Limit = 50,
) -> SubscriberPage:
    """Readers in id order, filtered; keyset pages (`after`), as fast at a million rows."""
    rows = readers.find(session, email=email, q=q, status=status_, after=after, limit=limit)
    items = [_subscriber(r, settings) for r in rows]
    return SubscriberPage(items=items, next_after=items[-1].id if len(items) == limit else None)


@router.get("/subscribers/{subscriber_id}", response_model=SubscriberDetail)
def get_subscriber(
    subscriber_id: Id, session: SessionDep, settings: SettingsDep
) -> SubscriberDetail:
    """One reader: status, times, consent records, deliveries, bounces and feedback."""
    found = readers.history(session, subscriber_id)
    if found is None:
        raise _missing("subscriber")
    return SubscriberDetail(
        **_subscriber(found.subscriber, settings).model_dump(),
        consents=[ConsentOut.model_validate(c, from_attributes=True) for c in found.consents],
        deliveries=[DeliveryOut.model_validate(d, from_attributes=True) for d in found.deliveries],
        bounces=[BounceOut.model_validate(b, from_attributes=True) for b in found.bounces],
        feedback=[FeedbackOut.model_validate(f, from_attributes=True) for f in found.feedback],
    )


@router.post("/subscribers/{subscriber_id}/unsubscribe", response_model=SubscriberOut)
def unsubscribe_subscriber(
    subscriber_id: Id, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> SubscriberOut:
    """Stop all mail to the reader at once (and suppress the address)."""
    try:
        reader = subscriptions.unsubscribe_by_operator(session, ctx, subscriber_id, who)
    except LookupError:
        raise _missing("subscriber") from None
    return _subscriber(reader, ctx.settings)


@router.post(
    "/subscribers/{subscriber_id}/resend-confirmation",
    response_model=SubscriberOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=CONFLICT,
)
def resend_confirmation(
    subscriber_id: Id, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> SubscriberOut:
    """Mail a pending reader their confirmation link again (409 for anyone else)."""
    try:
        reader = subscriptions.resend_confirmation(session, ctx, subscriber_id, who)
    except LookupError:
        raise _missing("subscriber") from None
    except subscriptions.NotPending as exc:
        raise HTTPException(409, exc.message) from None
    return _subscriber(reader, ctx.settings)


@router.delete("/subscribers/{subscriber_id}", response_model=SubscriberOut)
def erase_subscriber(
    subscriber_id: Id, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> SubscriberOut:
    """Erase the reader: personal data removed everywhere, the address kept only as a keyed
    hash on the suppression list. Erasing twice is fine."""
    try:
        reader = readers.erase(session, ctx, subscriber_id, who)
    except LookupError:
        raise _missing("subscriber") from None
    return _subscriber(reader, ctx.settings)


# Sends ------------------------------------------------------------------------------------


class SendOut(BaseModel):
    """One send, with its counts."""

    id: int
    kind: str = Field(description="column: a day's column; digest: an ISO week's digest")
    column_id: int = Field(description="the column sent (0 for a weekly digest)")
    week: str | None = Field(description='a digest\'s ISO week, e.g. "2026-W48"')
    date: dt.date
    title: str
    status: str
    readers: int
    sent: int
    failed: int
    deferred: int = Field(description="waiting for a retry after a transient failure")
    skipped: int = Field(description="readers who left between the snapshot and the hand-off")
    remaining: int
    rate: float = Field(description="messages handed over per second, over the last minute")
    pause_reason: str | None = Field(
        description="why a paused send is paused: the operator, or the relay's reply"
    )
    started_at: Moment
    paused_at: Moment | None
    finished_at: Moment | None
    cancelled_at: Moment | None
    preview_url: str = Field(
        description="the mail this send carries, as a reader gets it: the column's preview, "
        "or the week's digest preview"
    )


def _send(summary: sends.SendSummary) -> SendOut:
    return SendOut(
        id=summary.id,
        kind=summary.kind,
        column_id=summary.column_id,
        week=summary.week,
        date=summary.date,
        title=summary.title,
        status=summary.status,
        readers=summary.readers,
        sent=summary.counts.sent,
        failed=summary.counts.failed,
        deferred=summary.deferred,
        skipped=summary.counts.skipped,
        remaining=summary.counts.pending,
        rate=summary.rate,
        pause_reason=summary.pause_reason,
        started_at=summary.started_at,
        paused_at=summary.paused_at,
        finished_at=summary.finished_at,
        cancelled_at=summary.cancelled_at,
        preview_url=_preview_url(summary),
    )


def _preview_url(summary: sends.SendSummary) -> str:
    if summary.kind == sends.SendKind.digest and summary.week:
        return f"{router.prefix}/digests/{summary.week}/preview"
    return f"{router.prefix}/columns/{summary.column_id}/preview"


@router.get("/sends", response_model=list[SendOut])
def list_sends(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[SendOut]:
    """The latest sends with their delivery counts (older ones: `before` the last id)."""
    return [_send(summary) for summary in sends.latest(session, limit, before=before)]


@router.get("/sends/{send_id}", response_model=SendOut)
def get_send(send_id: Id, session: SessionDep) -> SendOut:
    """One send: counts by state, rate, times, and why it is paused."""
    summary = sends.summary(session, send_id)
    if summary is None:
        raise _missing("send")
    return _send(summary)


def _send_action(session: SessionDep, send_id: int, action: Any) -> SendOut:
    try:
        action(session, send_id)
    except LookupError:
        raise _missing("send") from None
    except sends.SendStateError as exc:
        raise HTTPException(409, str(exc)) from None
    summary = sends.summary(session, send_id)
    assert summary is not None
    return _send(summary)


@router.post("/sends/{send_id}/pause", response_model=SendOut, responses=CONFLICT)
def pause_send(send_id: Id, session: SessionDep) -> SendOut:
    """Pause a running send: hand-offs in progress finish, nothing more goes out."""
    return _send_action(session, send_id, sends.pause_by_operator)


@router.post("/sends/{send_id}/resume", response_model=SendOut, responses=CONFLICT)
def resume_send(send_id: Id, session: SessionDep) -> SendOut:
    """Resume a paused send (paused by the operator or by the relay's refusals); the
    workers pick it up within RESUME_INTERVAL. Nobody already sent gets it again."""
    return _send_action(session, send_id, sends.resume_by_operator)


@router.post("/sends/{send_id}/cancel", response_model=SendOut, responses=CONFLICT)
def cancel_send(send_id: Id, session: SessionDep) -> SendOut:
    """Cancel a send: readers not yet handed the column never get it; it cannot restart."""
    return _send_action(session, send_id, sends.cancel)


# Columns ----------------------------------------------------------------------------------


class ColumnSummary(BaseModel):
    """A stored column and when (or whether) it goes out."""

    id: int
    date: dt.date
    slug: str
    title: str
    send_at: Moment | None = Field(description="the operator's time (UTC), else SEND_TIME")
    cancelled_at: Moment | None
    send_id: int | None
    send_status: str | None


class ColumnPreview(BaseModel):
    """The exact mail a reader would get."""

    subject: str
    text: str
    html: str
    size_bytes: int


class DigestPreview(ColumnPreview):
    """The exact digest a weekly reader would get of the week's columns (no reader's history:
    their own leaves out what they were already mailed)."""

    week: str
    column_ids: list[int] = Field(description="the columns it holds, oldest first")


class TestCopyIn(BaseModel):
    """Where to mail a test copy."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=3, max_length=254)


class TestCopyOut(BaseModel):
    """What the relay said to the test copy."""

    sent: bool
    relay_reply: str | None


class ScheduleIn(BaseModel):
    """When a column goes out: `send_at` (with a zone offset; without one, TIMEZONE), null
    for SEND_TIME on its date; `cancelled` true to not send it at all."""

    model_config = ConfigDict(extra="forbid")

    send_at: dt.datetime | None = None
    cancelled: bool = False


def _column_summary(session: SessionDep, record: ColumnRecord) -> ColumnSummary:
    send = sends.for_column(session, record.id or 0)
    return ColumnSummary(
        id=record.id or 0,
        date=record.date,
        slug=record.slug,
        title=record.title,
        send_at=record.send_at,
        cancelled_at=record.cancelled_at,
        send_id=send.id if send else None,
        send_status=send.status if send else None,
    )


def _column(session: SessionDep, column_id: int) -> ColumnRecord:
    record = store.column_by_id(session, column_id)
    if record is None:
        raise _missing("column")
    return record


@router.get("/columns", response_model=list[ColumnSummary])
def list_columns(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=200)] = 30
) -> list[ColumnSummary]:
    """The latest columns by date, with their schedule and send."""
    return [_column_summary(session, record) for record in store.latest(session, limit)]


@router.get("/columns/{column_id}/preview", response_model=ColumnPreview)
def preview_column(column_id: Id, session: SessionDep, request: Request) -> ColumnPreview:
    """The exact text and HTML a reader would get (for a sample reader's links)."""
    record = _column(session, column_id)
    data = daily.reader_copy(
        _courier(request), record, to="reader@example.com", name="Reader", subscriber_id=0
    )
    shown = message.read_back(data)
    return ColumnPreview(
        subject=shown.subject, text=shown.text, html=shown.html, size_bytes=len(data)
    )


@router.post(
    "/columns/{column_id}/test", response_model=TestCopyOut, responses={502: {"model": Problem}}
)
async def test_column(column_id: Id, body: TestCopyIn, request: Request) -> TestCopyOut | Response:
    """Mail one test copy to `to`, as a reader would get it; no reader changes."""
    address = subscriptions.normalize_address(body.to)
    record = await in_thread(request.app.state.engine, store.column_by_id, column_id)
    if record is None:
        raise _missing("column")
    reply = await daily.send_test_copy(_courier(request), record, address)
    if reply is not None:
        raise HTTPException(502, f"The relay did not take the test copy: {reply}")
    return TestCopyOut(sent=True, relay_reply=None)


@router.post(
    "/columns/{column_id}/send",
    response_model=SendOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "the send had already started"},
        **CONFLICT,
        422: {"description": "a bad id, or a column that cannot be mailed (too large)"},
    },
)
async def send_column_now(column_id: Id, request: Request, response: Response) -> SendOut:
    """Start the column's send now: its active readers are snapshotted at once and the
    running `serve`/`worker` processes deliver it (within RESUME_INTERVAL). Starting it
    again returns the send that exists (200); nobody is ever sent it twice."""
    state = request.app.state
    try:
        send, created = await asyncio.to_thread(
            daily.start_now, state.engine, state.ctx.settings, column_id
        )
    except LookupError:
        raise _missing("column") from None
    except daily.ColumnCancelled as exc:
        raise HTTPException(409, str(exc)) from None
    except daily.ColumnNotSendable as exc:  # the same shape as any 422: a list of problems
        problem = {"loc": ["path", "column_id"], "msg": str(exc), "type": "value_error"}
        raise HTTPException(422, [problem]) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    summary = await in_thread(state.engine, sends.summary, send.id or 0)
    assert summary is not None
    return _send(summary)


@router.patch("/columns/{column_id}", response_model=ColumnSummary, responses=CONFLICT)
def schedule_column(
    column_id: Id, body: ScheduleIn, session: SessionDep, settings: SettingsDep
) -> ColumnSummary:
    """Reschedule or cancel a column before its send starts (409 after)."""
    send_at = body.send_at
    if send_at is not None:
        aware = send_at if send_at.tzinfo else send_at.replace(tzinfo=settings.tz)
        send_at = aware.astimezone(dt.UTC).replace(tzinfo=None)
    try:
        record = store.schedule(session, column_id, send_at=send_at, cancelled=body.cancelled)
    except LookupError:
        raise _missing("column") from None
    except store.ColumnLocked as exc:
        raise HTTPException(409, f"{exc}: it can no longer be rescheduled") from None
    return _column_summary(session, record)


def _courier(request: Request) -> Courier:
    state = request.app.state
    return Courier(state.engine, state.ctx, state.smtp_target)


# Digests ----------------------------------------------------------------------------------

Week = Annotated[str, Path(max_length=20, description='an ISO week, e.g. "2026-W48"')]
NO_DIGEST: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no column in that week"},
    422: {"description": "not an ISO week"},
}


def _week_columns(session: Session, week: str) -> tuple[str, list[ColumnRecord]]:
    """The week as its digest send names it and the columns of its preview; 422, 404."""
    try:
        named = digests.week_named(week)
    except ValueError as exc:
        problem = {"loc": ["path", "week"], "msg": str(exc), "type": "value_error"}
        raise HTTPException(422, [problem]) from None
    try:
        return named, digests.preview_columns(session, week=named)
    except digests.NoDigest as exc:
        raise HTTPException(404, f"There is {exc}.") from None


@router.get("/digests/{week}/preview", response_model=DigestPreview, responses=NO_DIGEST)
def preview_digest(week: Week, session: SessionDep, request: Request) -> DigestPreview:
    """The exact digest a weekly reader would get of the columns dated in that ISO week (for
    a sample reader's links; no reader's history applies)."""
    named, columns = _week_columns(session, week)
    data = daily.digest_copy(
        _courier(request), named, columns, to="reader@example.com", name="Reader", subscriber_id=0
    )
    shown = message.read_back(data)
    return DigestPreview(
        subject=shown.subject,
        text=shown.text,
        html=shown.html,
        size_bytes=len(data),
        week=named,
        column_ids=[column.id or 0 for column in columns],
    )


@router.post(
    "/digests/{week}/test",
    response_model=TestCopyOut,
    responses={**NO_DIGEST, 502: {"model": Problem}},
)
async def test_digest(week: Week, body: TestCopyIn, request: Request) -> TestCopyOut:
    """Mail one test copy of the week's digest to `to`, as a weekly reader would get it; no
    reader changes and no send is made."""
    address = subscriptions.normalize_address(body.to)
    named, columns = await in_thread(request.app.state.engine, _week_columns, week)
    reply = await daily.send_digest_test_copy(_courier(request), named, columns, address)
    if reply is not None:
        raise HTTPException(502, f"The relay did not take the test copy: {reply}")
    return TestCopyOut(sent=True, relay_reply=None)


# Feedback ---------------------------------------------------------------------------------


@router.get("/feedback", response_model=list[FeedbackOut])
def list_feedback(
    session: SessionDep,
    category: Annotated[Literal[tuple(feedback.CATEGORIES)] | None, Query()] = None,  # type: ignore[valid-type]
    resolved: bool | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Limit = 50,
) -> list[FeedbackOut]:
    """What readers reported, newest first; filter by category and resolved."""
    items = feedback.inbox(
        session, category=category, resolved=resolved, before=before, limit=limit
    )
    return [FeedbackOut.model_validate(f, from_attributes=True) for f in items]


@router.post("/feedback/{feedback_id}/resolve", response_model=FeedbackOut)
def resolve_feedback(feedback_id: Id, session: SessionDep) -> FeedbackOut:
    """Mark the feedback resolved."""
    return _feedback_action(session, feedback_id, resolved=True)


@router.post("/feedback/{feedback_id}/reopen", response_model=FeedbackOut)
def reopen_feedback(feedback_id: Id, session: SessionDep) -> FeedbackOut:
    """Mark resolved feedback open again."""
    return _feedback_action(session, feedback_id, resolved=False)


def _feedback_action(session: SessionDep, feedback_id: int, *, resolved: bool) -> FeedbackOut:
    try:
        item = feedback.resolve(session, feedback_id, resolved=resolved)
    except LookupError:
        raise _missing("feedback") from None
    return FeedbackOut.model_validate(item, from_attributes=True)

"""Operator endpoints under /api/v1/admin, behind the ADMIN_TOKEN bearer credential."""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from ..columns import sources
from ..columns.mail import mail_size_check
from ..delivery import sends
from .deps import SessionDep, SettingsDep
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
        503: {"model": Problem, "description": "the admin API is off, or the database is down"},
    },
)


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


class SendOut(BaseModel):
    """One send, with its counts."""

    id: int
    date: dt.date
    title: str
    status: str
    readers: int
    sent: int
    failed: int
    skipped: int = Field(description="readers who left between the snapshot and the hand-off")
    remaining: int
    pause_reason: str | None = Field(
        description="why a paused send is paused (the relay's reply); resume with "
        "`broadside send --date D`"
    )
    started_at: dt.datetime
    finished_at: dt.datetime | None


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


@router.get("/sends", response_model=list[SendOut])
def list_sends(
    session: SessionDep, limit: Annotated[int, Field(ge=1, le=100)] = 20
) -> list[SendOut]:
    """The latest sends with their delivery counts."""
    return [
        SendOut(
            id=summary.id,
            date=summary.date,
            title=summary.title,
            status=summary.status,
            readers=summary.readers,
            sent=summary.counts.sent,
            failed=summary.counts.failed,
            skipped=summary.counts.skipped,
            remaining=summary.counts.pending,
            pause_reason=summary.pause_reason,
            started_at=summary.started_at,
            finished_at=summary.finished_at,
        )
        for summary in sends.latest(session, limit)
    ]

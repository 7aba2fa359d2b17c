"""Public column pages: the list, one column (the "view in browser" target) and an Atom feed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import col, select

from ..errors import NotFound
from ..mail.column import column_view
from ..models import ColumnRecord
from .deps import SessionDep
from .templating import page

router = APIRouter(include_in_schema=False)
LIST_LIMIT = 100
FEED_LIMIT = 20


def _latest(session: SessionDep, limit: int) -> list[ColumnRecord]:
    query = select(ColumnRecord).order_by(col(ColumnRecord.date).desc()).limit(limit)
    return list(session.exec(query))


@router.get("/columns", response_class=HTMLResponse)
def columns(request: Request, session: SessionDep) -> HTMLResponse:
    return page(request, "columns", columns=_latest(session, LIST_LIMIT))


@router.get("/columns/{slug}", response_class=HTMLResponse)
def column(request: Request, slug: str, session: SessionDep) -> HTMLResponse:
    record = session.exec(select(ColumnRecord).where(ColumnRecord.slug == slug)).first()
    if record is None:
        raise NotFound(slug)
    return page(
        request,
        "column",
        column=column_view(record, base_url=request.app.state.ctx.settings.base_url),
    )


@router.get("/feed.xml")
def feed(request: Request, session: SessionDep) -> Response:
    """Atom (RFC 4287) of the latest columns."""
    base_url = request.app.state.ctx.settings.base_url
    records = _latest(session, FEED_LIMIT)
    views = [column_view(r, base_url=base_url) for r in records]
    updated = max((r.updated_at for r in records), default=None)
    templates = request.app.state.templates
    body = templates.get_template("pages/feed.xml").render(columns=views, updated=updated)
    return Response(body, media_type="application/atom+xml; charset=utf-8")

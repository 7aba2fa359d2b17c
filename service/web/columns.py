"""Public column pages: the list, one column (the "view in browser" target) and an Atom feed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ..columns.view import latest_views, view_by_slug
from ..errors import NotFound
from .deps import SessionDep, SettingsDep
from .templating import page

router = APIRouter(include_in_schema=False)
LIST_LIMIT = 100
FEED_LIMIT = 20


@router.get("/columns", response_class=HTMLResponse)
def columns(request: Request, session: SessionDep) -> HTMLResponse:
    """The list of columns."""
    views, _updated = latest_views(session, LIST_LIMIT)
    return page(request, "columns", columns=views)


@router.get("/columns/{slug}", response_class=HTMLResponse)
def column(request: Request, slug: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """One column's page (the "view in browser" target)."""
    view = view_by_slug(session, slug, base_url=settings.base_url)
    if view is None:
        raise NotFound(slug)
    return page(request, "column", column=view)


@router.get("/feed.xml")
def feed(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Atom (RFC 4287) of the latest columns."""
    views, updated = latest_views(session, FEED_LIMIT, base_url=settings.base_url)
    templates = request.app.state.templates
    body = templates.get_template("pages/feed.xml").render(columns=views, updated=updated)
    return Response(body, media_type="application/atom+xml; charset=utf-8")

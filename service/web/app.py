"""create_app: the FastAPI application, its lifespan (capture server, outbox sender,
scheduler) and the headers every response carries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..config import Settings
from ..context import build_context
from ..db import make_engine
from ..runtime import background
from . import admin, api, columns, dev, errors, pages
from .templating import make_templates

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Our URLs carry tokens: never leak them to other sites through Referer.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
        "frame-ancestors 'self'; form-action 'self'; base-uri 'self'"
    ),
}

DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


def create_app(
    settings: Settings, engine: Engine | None = None, *, scheduler: bool = True
) -> FastAPI:
    """The app; `scheduler=False` leaves the daily send to a separate `broadside worker`."""
    capture_mode = settings.smtp is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with background(app.state.engine, app.state.ctx, scheduler=scheduler) as runtime:
            app.state.outbox = runtime.outbox
            app.state.smtp_target = runtime.target
            yield

    app = FastAPI(
        title="Broadside",
        version=__version__,
        lifespan=lifespan,
        description="Double opt-in subscriptions and the daily World View column by e-mail.",
    )
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.ctx = build_context(settings)
    app.state.templates = make_templates(settings)
    errors.install(app)
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(columns.router)
    app.include_router(admin.router)
    if capture_mode:
        app.include_router(dev.router)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 when it does not."""
        try:
            with app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("health check: database unreachable: %s", exc.__class__.__name__)
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            if name == "Content-Security-Policy" and request.url.path in DOCS_PATHS:
                continue  # FastAPI's /docs page loads Swagger UI from its CDN
            response.headers.setdefault(name, value)
        return response

    return app

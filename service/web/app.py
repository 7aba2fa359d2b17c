"""create_app: the FastAPI application, its lifespan (capture server, outbox sender,
scheduler) and the checks every request passes at the edge."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp

from .. import __version__
from ..config import Settings
from ..context import build_context
from ..db import GroupCommit, make_engine, ping
from ..metrics import registry
from ..readiness import ReadinessProbe
from ..runtime import background
from . import admin, api, columns, dashboard, dev, errors, metrics, pages, preferences, webhooks
from .body_limit import BodyLimit
from .cross_site import CrossSiteWrites
from .observe import Observe
from .security_headers import SecurityHeaders
from .templating import make_templates

log = logging.getLogger(__name__)


class Broadside(FastAPI):
    """FastAPI with the security headers outside its error middleware, so that the 500 page
    it renders carries them too (middleware added with add_middleware runs inside it); the
    request id and the timing outside everything, so that every answer has both."""

    def build_middleware_stack(self) -> ASGIApp:
        """The app with the security headers wrapped around everything, error pages included."""
        return Observe(SecurityHeaders(super().build_middleware_stack()))


def create_app(
    settings: Settings, engine: Engine | None = None, *, scheduler: bool = True
) -> FastAPI:
    """The app; `scheduler=False` leaves the daily send to a separate `broadside worker`."""
    # The mail viewer shows every captured mail to anyone who can reach the server: only in
    # development (production refuses to start without SMTP_URL anyway).
    dev_outbox = settings.relay is None and settings.env == "development"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with background(app.state.engine, app.state.ctx, scheduler=scheduler) as runtime:
            app.state.outbox = runtime.outbox
            app.state.smtp_target = runtime.target
            app.state.readiness = ReadinessProbe(app.state.engine, runtime.target)
            yield

    app = Broadside(
        # Broadside's own figures are Prometheus metrics and logs. FastAPI's OpenTelemetry
        # looked up the global providers on every request to learn it had none: 3 % of the
        # interpreter's time under a burst of sign-ups (docs/BENCHMARKS.md, G6).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        title="Broadside",
        version=__version__,
        lifespan=lifespan,
        description="Double opt-in subscriptions and the daily World View column by e-mail.",
    )
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.writes = GroupCommit(app.state.engine)
    app.state.ctx = build_context(settings)
    app.state.templates = make_templates(settings)
    app.state.metrics = registry(app.state.engine)
    errors.install(app)
    app.include_router(pages.router)
    app.include_router(preferences.router)
    app.include_router(api.router)
    app.include_router(columns.router)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    dashboard.install(app, settings)  # /admin pages, their sign-in, /static
    if dev_outbox:
        app.include_router(dev.router)
    if settings.metrics_port is None:  # else served on 127.0.0.1:METRICS_PORT, not here
        app.include_router(metrics.router)
    # The last added runs first: a cross-site post is refused before its body is read.
    app.add_middleware(BodyLimit)
    app.add_middleware(CrossSiteWrites, base_url=settings.base_url)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 when it does not."""
        try:
            ping(app.state.engine)
        except SQLAlchemyError as exc:
            log.warning("health check: database unreachable: %s", exc.__class__.__name__)
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "a check failed"}})
    async def readyz() -> JSONResponse:
        """200 when the database answers, its schema is current and the relay answers EHLO;
        503 naming the checks that failed. Liveness is /healthz."""
        outcome = await app.state.readiness.check()
        body = {
            "status": "ok" if outcome.ready else "unavailable",
            "checks": {name: check.state for name, check in outcome.checks.items()},
            "failing": outcome.failing,
        }
        return JSONResponse(body, 200 if outcome.ready else 503)

    return app

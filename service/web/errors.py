"""Domain exceptions to status codes and pages, in one place; JSON under /api, HTML elsewhere.
Nothing a reader sends ever earns a 500 or a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from ..columns.mail import ColumnTooLarge
from ..columns.store import ColumnFileError
from ..errors import (
    AlreadyConfirmed,
    CannotResubscribe,
    InvalidInput,
    LinkUsed,
    NotFound,
    RateLimited,
)
from ..tokens import Purpose, TokenError, TokenExpired
from .logs import RedactTokens
from .templating import page

log = logging.getLogger(__name__)
log.addFilter(RedactTokens())  # the paths and errors logged here may hold a link's token
# What a 503 asks the client to wait: a writer holding SQLite's lock or a database restart.
DATABASE_RETRY_AFTER = 5


class Problem(BaseModel):
    """What every refusal under /api/ answers (422 lists the fields instead)."""

    detail: str


# Answers any /api/ operation may give before or beside its own: documented once, on every
# operation, so that a client (and the schema fuzzer) knows them.
EDGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body is not valid JSON"},
    403: {"model": Problem, "description": "a cross-site request from a browser"},
    413: {"model": Problem, "description": "the body is larger than the limit"},
    503: {"model": Problem, "description": "the database is busy or unreachable; see Retry-After"},
}


def _is_api(request: Request) -> bool:
    """Machines call /api/ and /webhooks/: they get JSON errors, people get pages."""
    return request.url.path.startswith(("/api/", "/webhooks/"))


def _json(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    if _is_api(request):
        detail = [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return page(request, "error", 422, title="Please check your input", message=exc.message)


async def _rate_limited(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RateLimited)
    headers = {"Retry-After": str(exc.retry_after)}
    if _is_api(request):
        return _json(429, f"Too many requests; try again in {exc.retry_after} seconds.", headers)
    return page(request, "too_many", 429, headers=headers, minutes=max(1, exc.retry_after // 60))


async def _token(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TokenError)
    expired = isinstance(exc, TokenExpired)
    status = 410 if expired else 400
    purpose = exc.args[0] if exc.args else Purpose.confirm
    if _is_api(request):
        return _json(status, "This link has expired." if expired else "This link is not valid.")
    return page(
        request,
        "link_problem",
        status,
        problem="expired" if expired else "invalid",
        purpose=str(purpose),
    )


async def _link_used(request: Request, _exc: Exception) -> Response:
    if _is_api(request):
        return _json(410, "This confirmation link has already been used.")
    return page(request, "link_problem", 410, problem="used", purpose="confirm")


async def _already_confirmed(request: Request, _exc: Exception) -> Response:
    if _is_api(request):
        return _json(409, "This subscription is already confirmed.")
    return page(request, "already_confirmed")


async def _cannot_resubscribe(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CannotResubscribe)
    if _is_api(request):
        return _json(409, "Subscribe again through /api/v1/subscriptions to get a new link.")
    return page(request, "subscribe_again", 409, email=exc.email, status=exc.status)


async def _column_refused(request: Request, exc: Exception) -> Response:
    """A column that cannot be parsed or would not fit in a mail: the reason, as a 422."""
    if _is_api(request):
        return _json(422, str(exc))
    return page(request, "error", 422, title="This column was not stored", message=str(exc))


async def _not_found(request: Request, _exc: Exception) -> Response:
    if _is_api(request):
        return _json(404, "Not found.")
    return page(
        request, "error", 404, title="Page not found", message="There is nothing at this address."
    )


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_api(request) or exc.status_code < 400:
        return await http_exception_handler(request, exc)
    if exc.status_code == 404:
        return await _not_found(request, exc)
    return page(
        request,
        "error",
        exc.status_code,
        headers=dict(exc.headers or {}),
        title="That did not work",
        message=str(exc.detail),
    )


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if _is_api(request):
        return await request_validation_exception_handler(request, exc)
    return page(
        request,
        "error",
        422,
        title="Please check your input",
        message="Some of what was sent is missing or malformed.",
    )


async def refuse(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The answer of a check made before routing (cross-site form, body size), the same as
    an HTTPException raised by a handler."""
    return await _http(request, HTTPException(status, message, headers))


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """SQLite's write lock held past the busy timeout, the pool exhausted, or a database that
    does not answer: the transaction was rolled back, so the request can simply be repeated."""
    assert isinstance(exc, DBAPIError | PoolTimeout)
    if isinstance(exc, DBAPIError) and not (
        isinstance(exc, OperationalError) or exc.connection_invalidated
    ):
        return await _unexpected(request, exc)  # a bug (constraint, syntax), not an outage
    cause = str(exc.orig if isinstance(exc, DBAPIError) else exc).splitlines()[0]
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, cause)
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER)}
    if _is_api(request):
        return _json(503, "The service is busy; nothing was saved. Try again shortly.", headers)
    return page(
        request,
        "error",
        503,
        headers=headers,
        title="Busy for a moment",
        message="Nothing was saved. Please try again in a few seconds.",
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    if _is_api(request):
        return _json(500, "Something went wrong on our side; it has been logged.")
    return page(
        request,
        "error",
        500,
        title="Something went wrong on our side",
        message="It has been logged. Please try again in a moment.",
    )


def install(app: FastAPI) -> None:
    """Map every domain exception to its status code and page (or JSON under /api/)."""
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(TokenError, _token)
    app.add_exception_handler(LinkUsed, _link_used)
    app.add_exception_handler(AlreadyConfirmed, _already_confirmed)
    app.add_exception_handler(CannotResubscribe, _cannot_resubscribe)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(ColumnFileError, _column_refused)
    app.add_exception_handler(ColumnTooLarge, _column_refused)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)

"""Domain exceptions to status codes and pages, in one place; JSON under /api, HTML elsewhere.
Nothing a reader sends ever earns a 500 or a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import AlreadyConfirmed, InvalidInput, LinkUsed, NotFound, RateLimited
from ..tokens import Purpose, TokenError, TokenExpired
from .templating import page

log = logging.getLogger(__name__)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


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
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(TokenError, _token)
    app.add_exception_handler(LinkUsed, _link_used)
    app.add_exception_handler(AlreadyConfirmed, _already_confirmed)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)

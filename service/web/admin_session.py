"""The dashboard's door: the session cookie, the dependencies that let only a signed-in
operator through (and a POST only with its session's CSRF token), and what others get."""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from .. import operators
from ..config import ENV_PREFIX, Settings
from ..context import Requester
from ..db import in_thread
from ..operators import AdminSession
from .templating import page

log = logging.getLogger(__name__)

COOKIE = "broadside_admin"
FLASH_COOKIE = "broadside_flash"  # one message for the page after a redirect
COOKIE_PATH = "/admin"  # the cookies go nowhere else
SIGN_IN = "/admin/sign-in"
# The sign-in form's CSRF token, before there is a session to keep it in: the same random
# value in a cookie and in the form (double submit), good for an hour.
SIGN_IN_COOKIE = "broadside_sign_in"
SIGN_IN_SECONDS = 3600
FLASH_SECONDS = 60


class DashboardOff(Exception):
    """No usable ADMIN_PASSWORD is set: nobody can sign in."""


class SignInNeeded(Exception):
    """No valid session cookie came with the request."""


def install_password(app: FastAPI, settings: Settings) -> None:
    """Hash ADMIN_PASSWORD once, at start-up (or take it as the hash it is). A hash that
    cannot be read turns the dashboard off and says so, rather than stopping the service."""
    app.state.admin_password = None
    app.state.admin_password_problem = None
    if settings.admin_password is None:
        return
    try:
        app.state.admin_password = operators.Password.from_setting(
            settings.admin_password.get_secret_value()
        )
    except ValueError as exc:
        app.state.admin_password_problem = f"{ENV_PREFIX}ADMIN_PASSWORD {exc}"
        log.error("the dashboard is off: %s", app.state.admin_password_problem)


def password(request: Request) -> operators.Password:
    """The dashboard's password; DashboardOff when there is none."""
    found: operators.Password | None = request.app.state.admin_password
    if found is None:
        raise DashboardOff()
    return found


async def current_operator(request: Request) -> AdminSession:
    """The signed-in operator's session, looked up in a short transaction of its own (the
    handler may talk SMTP or start a send, which must not wait on a lock held here)."""
    password(request)
    token = request.cookies.get(COOKIE, "")
    found = None
    if token:
        found = await in_thread(request.app.state.engine, operators.session_for, token)
    if found is None:
        raise SignInNeeded()
    return found


OperatorDep = Annotated[AdminSession, Depends(current_operator)]


def checked_form(operator: OperatorDep, csrf: Annotated[str, Form()] = "") -> AdminSession:
    """A signed-in operator's form: its CSRF token must be the session's (403 otherwise)."""
    if not operators.form_token_matches(operator, csrf):
        raise HTTPException(403, "This form has expired or did not come from the dashboard.")
    return operator


FormOperatorDep = Annotated[AdminSession, Depends(checked_form)]


def requester(request: Request) -> Requester:
    """Who is acting, for consent records and the sign-in limit."""
    return Requester(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        source="dashboard",
    )


def set_session_cookie(
    response: Response, signed_in: operators.SignedIn, settings: Settings
) -> None:
    """The session cookie: script cannot read it, no other site's request carries it, and
    in production it only travels over HTTPS."""
    response.set_cookie(
        COOKIE,
        signed_in.token,
        max_age=int(settings.admin_session_hours * 3600),
        path=COOKIE_PATH,
        secure=settings.env == "production",
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    """Tell the browser to forget the session cookie."""
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=settings.env == "production",
        httponly=True,
        samesite="strict",
    )


def redirect(url: str, message: str | None = None, *, error: bool = False) -> RedirectResponse:
    """See Other to `url` (a GET after a POST), with a message for the page shown there."""
    response = RedirectResponse(url, status_code=303)
    if message:
        value = ("!" if error else "") + quote(message[:300], safe="")
        response.set_cookie(
            FLASH_COOKIE,
            value,
            max_age=FLASH_SECONDS,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
        )
    return response


def show(
    request: Request,
    operator: AdminSession,
    name: str,
    status_code: int = 200,
    **values: Any,
) -> Response:
    """Render templates/pages/admin/NAME.html with the form token and the pending message."""
    raw = request.cookies.get(FLASH_COOKIE, "")
    flash = {"text": unquote(raw.lstrip("!")), "error": raw.startswith("!")} if raw else None
    response = page(
        request,
        f"admin/{name}",
        status_code,
        csrf=operator.csrf_token,
        flash=flash,
        **values,
    )
    if raw:
        response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of ours, never another site."""
    if not target or "//" in target or "\\" in target:
        return "/admin"
    return target if target == "/admin" or target.startswith(("/admin/", "/admin?")) else "/admin"


def sign_in_page(
    request: Request,
    status_code: int = 200,
    *,
    next_url: str | None = None,
    error: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The sign-in form, with its pre-session CSRF token in the form and in a cookie."""
    token = request.cookies.get(SIGN_IN_COOKIE, "")
    if not 32 <= len(token) <= 64:
        token = secrets.token_urlsafe(32)
    response = page(
        request,
        "admin/sign_in",
        status_code,
        headers=headers,
        csrf=token,
        next=safe_next(next_url),
        error=error,
    )
    settings: Settings = request.app.state.ctx.settings
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=SIGN_IN_SECONDS,
        path=COOKIE_PATH,
        secure=settings.env == "production",
        httponly=True,
        samesite="strict",
    )
    return response


def sign_in_form_matches(request: Request, given: str) -> bool:
    """Whether the sign-in form's token is the one its cookie holds."""
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    return bool(expected and given) and hmac.compare_digest(expected.encode(), given.encode())


async def _sign_in_needed(request: Request, _exc: Exception) -> Response:
    """A page asks to sign in first and comes back; a script's JSON or a form gets 401."""
    if request.url.path.endswith(".json"):
        return JSONResponse({"detail": "Sign in to the dashboard."}, status_code=401)
    if request.method in ("GET", "HEAD"):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{SIGN_IN}?{urlencode({'next': back})}", status_code=303)
    return sign_in_page(
        request, 401, error="Your session has ended, so nothing was changed. Sign in again."
    )


async def _dashboard_off(request: Request, _exc: Exception) -> Response:
    """401 with how to turn the dashboard on: never a 404 that hides it, never open."""
    if request.url.path.endswith(".json"):
        return JSONResponse({"detail": "The dashboard is off: set ADMIN_PASSWORD."}, 401)
    problem = request.app.state.admin_password_problem
    return page(request, "admin/off", 401, problem=problem)


def install_handlers(app: FastAPI) -> None:
    """What a request without a session, or to a dashboard that is off, gets."""
    app.add_exception_handler(SignInNeeded, _sign_in_needed)
    app.add_exception_handler(DashboardOff, _dashboard_off)

"""Cross-site form posts are refused: another web page must not make a visitor's browser
subscribe someone, send feedback or change anything else here."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import refuse
from .logs import redact

log = logging.getLogger(__name__)

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# RFC 8058: a mail provider POSTs the List-Unsubscribe URL from its own servers or from the
# reader's mail web app, with whatever Origin that gives; it must always work.
ONE_CLICK_RE = re.compile(r"/unsubscribe/[^/]+")
DEFAULT_PORTS = {"http": 80, "https": 443}
MESSAGE = (
    "This form was sent from another website, so we did not act on it. "
    "Please use the form on our own pages."
)


def origin(scheme: str, netloc: str) -> str | None:
    """scheme://host[:port] in the form browsers send in Origin, or None if malformed."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = scheme.lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origin_of_url(url: str) -> str | None:
    parts = urlsplit(url)
    return origin(parts.scheme, parts.netloc) if parts.scheme and parts.netloc else None


def is_cross_site(scope: Scope, public_origin: str | None) -> bool:
    """A state-changing request a browser sent from a page of another site: its Origin is
    neither our public one (BASE_URL) nor the one it was sent to, or it is `null` (a sandboxed
    or privacy-stripped page), or the browser says so in Sec-Fetch-Site. Requests without
    these headers (curl, servers, mail clients) are not from a browser page and pass."""
    if scope["method"] not in STATE_CHANGING:
        return False
    if scope["method"] == "POST" and ONE_CLICK_RE.fullmatch(scope["path"]):
        return False
    headers = Headers(scope=scope)
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    sent_from = headers.get("origin")
    if sent_from is None:
        return False
    sent_to = origin(scope["scheme"], headers.get("host", ""))
    ours = {o for o in (public_origin, sent_to) if o is not None}
    return _origin_of_url(sent_from) not in ours


class CrossSiteWrites:
    """Answers 403 (a page, or JSON under /api/) to a cross-site state-changing request."""

    def __init__(self, app: ASGIApp, *, base_url: str) -> None:
        self.app = app
        self.public_origin = _origin_of_url(base_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_cross_site(scope, self.public_origin):
            headers = Headers(scope=scope)
            log.info(
                "refused a cross-site %s %s from origin %s (sec-fetch-site %s)",
                scope["method"],
                redact(scope["path"]),
                headers.get("origin"),
                headers.get("sec-fetch-site"),
            )
            response = await refuse(Request(scope), 403, MESSAGE)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

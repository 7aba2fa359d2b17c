"""What every request leaves behind for the operator: an id (the caller's X-Request-ID when it
is sane, or a new one) on its log lines and in its answer, and its timing by route template."""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import request_id
from ..metrics import observe_request

HEADER = "X-Request-ID"
# A proxy's id is kept so one request can be followed through both logs; anything else
# (too long, spaces, quotes, line breaks) could forge or break a log line and is replaced.
SANE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Any other method is counted as "other": a client must not be able to add label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id_for(incoming: str | None) -> str:
    """The caller's id if it is sane, otherwise a new random one."""
    if incoming and SANE_ID_RE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The template of the route that answered (`/unsubscribe/{token}`, never the token
    itself), or `unmatched` for a request no route took."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class Observe:
    """Sets the request id for the request's context (every line logged while it is handled
    carries it), returns it in X-Request-ID, and times the request to the end of its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        current = request_id_for(Headers(scope=scope).get(HEADER))
        status = 500  # what the client gets when the app fails before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = current
            await send(message)

        token = request_id.set(current)
        try:
            await self.app(scope, receive, send_observed)
        finally:
            request_id.reset(token)
            method = scope["method"] if scope["method"] in METHODS else "other"
            observe_request(method, route_of(scope), status, time.perf_counter() - started)

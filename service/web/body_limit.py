"""Request bodies over a size limit are refused with 413 before they are read into memory."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import refuse

# Every form and JSON body a reader sends fits in far less (a feedback message is at most
# 20,000 characters); the limit keeps a client from making the server buffer megabytes.
MAX_BODY_BYTES = 64 * 1024
# The column admin API takes a whole column (up to 1,000,000 characters, JSON-escaped).
MAX_COLUMN_BODY_BYTES = 4 * 1024 * 1024
# SNS messages are up to 256 KB; a Postmark bounce may quote the bounced message.
MAX_WEBHOOK_BODY_BYTES = 256 * 1024
# A reader list uploaded to the dashboard (spooled to a temporary file as it arrives); larger
# lists go through `broadside subscribers import`.
MAX_IMPORT_BODY_BYTES = 64 * 1024 * 1024
LARGER_LIMITS = {
    "/api/v1/admin/columns": MAX_COLUMN_BODY_BYTES,
    "/admin/columns": MAX_COLUMN_BODY_BYTES,
    "/admin/subscribers/import": MAX_IMPORT_BODY_BYTES,
    "/webhooks/ses": MAX_WEBHOOK_BODY_BYTES,
    "/webhooks/postmark": MAX_WEBHOOK_BODY_BYTES,
}


def body_limit(path: str) -> int:
    """The most bytes a request body to `path` may have."""
    return LARGER_LIMITS.get(path, MAX_BODY_BYTES)


def _message(limit: int) -> str:
    return f"The request is larger than {limit // 1024} KB; nothing was done."


class BodyTooLarge(HTTPException):
    """Raised to the app from `receive`: its handler answers 413 like any HTTPException."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit))


class BodyLimit:
    """Checks Content-Length before the app runs, and counts the bytes of a body sent without
    one (chunked) as the app reads it, stopping at the first chunk past the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = await refuse(Request(scope), 413, _message(limit))
            await response(scope, receive, send)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            # Read outside a handler's error mapping (a middleware or a background read).
            if started:
                raise
            response = await refuse(Request(scope), 413, _message(limit))
            await response(scope, receive, send)

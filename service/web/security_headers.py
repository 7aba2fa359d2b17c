"""The security headers of every response: a Content-Security-Policy without inline script,
no framing, no sniffing, no Referer; the OpenAPI pages get a policy of their own."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Inline <style> stays allowed (the pages carry their CSS inline); inline script does not,
# so injected markup cannot run. frame-ancestors 'none' keeps every page out of frames
# (clickjacking of the subscribe and unsubscribe buttons).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https:; object-src 'none'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'self'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Our URLs carry tokens: never leak them to other sites through Referer. Not no-referrer:
    # under it browsers send `Origin: null` with our own forms, which cross_site refuses.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
}
# FastAPI's /docs (Swagger UI) and /redoc load their scripts and styles from a CDN, and
# Swagger UI starts with an inline script: their policy is built from the page itself.
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
INLINE_SCRIPT_RE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
SCRIPT_URL_RE = re.compile(r"""<script[^>]*\bsrc=["'](https?://[^"']+)""", re.I)
LINK_RE = re.compile(r"<link\b[^>]*>", re.I)
HREF_RE = re.compile(r"""\bhref=["'](https?://[^"']+)""", re.I)


def script_hashes(html: str) -> list[str]:
    """CSP source expressions ('sha256-…') allowing exactly the inline scripts of `html`."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in INLINE_SCRIPT_RE.findall(html)
    ]


def docs_policy(html: str) -> str:
    """The policy of an OpenAPI docs page: the origins of its scripts and style sheets, and
    its own inline scripts by hash (images and fonts may come from any https: origin)."""
    scripts = " ".join(["'self'", *_origins(SCRIPT_URL_RE.findall(html)), *script_hashes(html)])
    sheets = [
        url
        for link in LINK_RE.findall(html)
        if re.search(r"\brel=[\"']?stylesheet", link, re.I)
        for url in HREF_RE.findall(link)
    ]
    styles = " ".join(["'self'", "'unsafe-inline'", *_origins(sheets)])
    return (
        f"default-src 'self'; script-src {scripts}; style-src {styles}; "
        "img-src 'self' data: https:; font-src 'self' data: https:; worker-src 'self' blob:; "
        "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; "
        "form-action 'self'"
    )


def _origins(urls: list[str]) -> list[str]:
    return sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, urls)})


class SecurityHeaders:
    """Adds HEADERS and the policy to every response start, errors included, keeping any
    header a response set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] in DOCS_PATHS:
            await self.app(scope, receive, _docs_sender(send))
        else:
            await self.app(scope, receive, _sender(send, PAGE_POLICY))


def _sender(send: Send, policy: str) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            _add_headers(message, policy)
        await send(message)

    return send_with_headers


def _docs_sender(send: Send) -> Send:
    """Holds the response start until the whole page is there, to hash its scripts."""
    start: Message | None = None
    body: list[bytes] = []

    async def send_docs(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        page = b"".join(body)
        _add_headers(start, docs_policy(page.decode("utf-8", "replace")))
        await send(start)
        await send({"type": "http.response.body", "body": page})

    return send_docs


def _add_headers(message: Message, policy: str) -> None:
    message.setdefault("headers", [])
    headers = MutableHeaders(scope=message)
    for name, value in HEADERS.items():
        headers.setdefault(name, value)
    headers.setdefault("Content-Security-Policy", policy)

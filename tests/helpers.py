"""Small helpers the tests share: pulling links out of the mails that arrived."""

from __future__ import annotations

import re

from tests.smtp_server import Received

URL_RE = re.compile(r"https://news\.example\.com/[^\s\"'<>]+")


def links(mail: Received, path: str) -> list[str]:
    """Every link in the mail's plain-text part whose path starts with `path`."""
    body = mail.message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()  # type: ignore[attr-defined]
    return [u for u in URL_RE.findall(text) if u.startswith(f"https://news.example.com{path}")]


def path_of(url: str) -> str:
    return url.removeprefix("https://news.example.com")

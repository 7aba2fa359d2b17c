"""Link tokens never reach a log line: uvicorn's access and error log of a real server, and
the lines we log ourselves."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import Request
from sqlalchemy.engine import Engine

from service.web.app import create_app
from service.web.logs import redact
from tests.conftest import make_settings
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer
from tests.web.live import serving

TOKEN = "MTIz.c2VjcmV0LWxpbmstdG9rZW4"


@contextmanager
def uvicorn_output() -> Iterator[io.StringIO]:
    """What the handlers uvicorn configured (access and error log) write, while the block runs."""
    out = io.StringIO()
    handlers = [*logging.getLogger("uvicorn").handlers]
    handlers += logging.getLogger("uvicorn.access").handlers
    assert handlers, "uvicorn has configured its log handlers"
    streams = [h.setStream(out) for h in handlers]  # type: ignore[attr-defined]
    try:
        yield out
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)  # type: ignore[attr-defined]


def test_the_access_and_error_log_show_no_tokens(
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    app = create_app(settings, engine, scheduler=False)

    @app.get("/unsubscribe/{token}/fails")
    def fails(request: Request) -> None:
        raise RuntimeError(f"cannot handle {request.url}")  # a bug that prints the URL

    with (
        serving(app, settings) as base_url,
        httpx.Client(base_url=base_url) as client,
        uvicorn_output() as out,
    ):
        answers = [
            client.get(f"/unsubscribe/{TOKEN}").status_code,
            client.get(f"/confirm/{TOKEN}").status_code,
            client.post(f"/confirm/{TOKEN}").status_code,
            client.get(f"/feedback?t={TOKEN}").status_code,
            client.get(f"/unsubscribe/{TOKEN}/fails").status_code,
        ]
        # uvicorn logs the exception after the 500 has gone out.
        eventually(lambda: "Exception in ASGI application" in out.getvalue(), 5.0, every=0.02)
    logged = out.getvalue()

    assert answers == [400, 400, 400, 200, 500]
    assert 'GET /unsubscribe/… HTTP/1.1" 400' in logged
    assert 'POST /confirm/… HTTP/1.1" 400' in logged
    assert 'GET /feedback?t=… HTTP/1.1" 200' in logged
    assert "Exception in ASGI application" in logged and "cannot handle" in logged
    assert TOKEN not in logged
    ours = [r for r in caplog.records if r.name == "service.web.errors"]
    assert ours and "GET /unsubscribe/…/fails" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ("GET /confirm/abc.def HTTP/1.1", "GET /confirm/… HTTP/1.1"),
        ("POST /unsubscribe/abc.def", "POST /unsubscribe/…"),
        ("/unsubscribe/abc.def/resubscribe", "/unsubscribe/…/resubscribe"),
        ("/resubscribe/abc.def", "/resubscribe/…"),
        ("/preferences/abc.def?x=1", "/preferences/…?x=1"),
        ("https://news.example.com/feedback?t=abc.def", "https://news.example.com/feedback?t=…"),
        ("/feedback?lang=en&t=abc.def#top", "/feedback?lang=en&t=…#top"),
        (
            "/api/v1/unsubscriptions /columns/2016-02-04",
            "/api/v1/unsubscriptions /columns/2016-02-04",
        ),
    ],
)
def test_redaction_covers_every_link_with_a_token(line: str, redacted: str) -> None:
    assert redact(line) == redacted

"""The embedded default: no SMTP_URL means a capture server and mail readable at /dev/outbox."""

from __future__ import annotations

import smtplib
import socket
import time
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.mail import capture
from service.mail.smtp import relay_target
from service.web.app import create_app
from tests.conftest import make_settings
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {name: value or "" for name, value in attrs}))


def tags(page: str) -> list[tuple[str, dict[str, str]]]:
    """Each element of the page with its attributes, unescaped as a browser reads them."""
    parser = _Tags()
    parser.feed(page)
    return parser.found


def iframes(page: str) -> list[dict[str, str]]:
    return [attrs for tag, attrs in tags(page) if tag == "iframe"]


def test_capture_mode_keeps_mail_and_shows_it(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "var", capture_port=0)
    assert relay_target(settings) is None
    with TestClient(create_app(settings, engine, scheduler=False)) as client:
        assert client.get("/dev/outbox").status_code == 200
        client.post("/subscribe", data={"email": "newcomer@example.com", "name": "Nia"})
        [eml] = eventually(lambda: sorted(settings.outbox_dir.glob("*.eml")), timeout=10)
        raw = eml.read_bytes()
        assert raw.startswith(
            b"Return-Path: <bounces@news.example.com>\r\nDelivered-To: newcomer@example.com"
        )

        listing = client.get("/dev/outbox")
        assert (
            "Confirm your subscription to World View" in listing.text and eml.name in listing.text
        )
        page = client.get(f"/dev/outbox/{eml.name}")
        assert page.status_code == 200 and "/confirm/" in page.text
        [frame] = iframes(page.text)
        assert '<base target="_top">' in frame["srcdoc"]
        assert "Confirm my subscription" in frame["srcdoc"]
        assert client.get(f"/dev/outbox/{eml.name}/raw").content == raw
        assert client.get("/dev/outbox/..%2Fsecret").status_code == 404
        assert client.get("/dev/outbox/nothing.eml").status_code == 404


def test_no_dev_outbox_when_a_relay_is_configured(app_client: TestClient) -> None:
    assert app_client.get("/dev/outbox").status_code == 404


def test_the_viewer_shows_a_mail_without_letting_its_html_run_script(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "var", capture_port=0)
    mail = EmailMessage()
    mail["Subject"] = "Hostile"
    mail.set_content("plain part")
    mail.add_alternative(
        '<html><head></head><body><p>Hello "reader"</p><script>alert(1)</script>'
        '<img src=x onerror="alert(2)"></body></html>',
        subtype="html",
    )
    eml = capture.save(settings.outbox_dir, mail.as_bytes())
    with TestClient(create_app(settings, engine, scheduler=False)) as client:
        page = client.get(f"/dev/outbox/{eml.name}")

    [frame] = iframes(page.text)
    # The frame shows the mail from srcdoc (no URL of ours to frame: every page forbids it),
    # sandboxed without allow-scripts; the page's policy has no inline script either.
    assert "src" not in frame
    assert '<p>Hello "reader"</p><script>alert(1)</script>' in frame["srcdoc"]
    sandbox = frame["sandbox"].split()
    assert "allow-scripts" not in sandbox and "allow-same-origin" not in sandbox
    elements = tags(page.text)
    assert "script" not in [tag for tag, _ in elements], "the mail's markup stays in srcdoc"
    assert not [name for _, attrs in elements for name in attrs if name.startswith("on")]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get(f"/dev/outbox/{eml.name}/html").status_code == 404


def test_no_dev_outbox_in_production(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", env="production", smtp_url=smtp_server.url
    )
    client = TestClient(create_app(settings, engine, scheduler=False))

    assert client.get("/dev/outbox").status_code == 404
    assert client.get("/dev/outbox/00000000000000000000-000000000000.eml").status_code == 404


def test_the_capture_server_on_port_0_listens_at_once_on_a_port_of_its_own(
    tmp_path: Path,
) -> None:
    server = capture.CaptureServer(tmp_path / "outbox", port=0)
    server.start()
    try:
        assert server.port > 0
        with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
        [mail] = capture.listing(tmp_path / "outbox")
        assert mail.subject == "hi"
        assert "b@example.org" in mail.message["Delivered-To"]
    finally:
        server.stop()


def test_a_capture_port_held_by_something_else_is_an_error_at_once(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:  # listens, but answers no SMTP
        server = capture.CaptureServer(tmp_path / "outbox", port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(OSError, match="in use"):
            server.start()
        assert time.monotonic() - started < 2  # not aiosmtpd's ready_timeout of 10 s

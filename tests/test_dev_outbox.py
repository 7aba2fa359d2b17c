"""The embedded default: no SMTP_URL means a capture server and mail readable at /dev/outbox."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.mail.capture import free_port
from service.web.app import create_app
from tests.conftest import make_settings


def wait_for_files(folder: Path, count: int, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.eml"))
        if len(files) >= count:
            return files
        time.sleep(0.05)
    return sorted(folder.glob("*.eml"))


def test_capture_mode_keeps_mail_and_shows_it(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "var", capture_port=free_port())
    assert settings.smtp is None
    with TestClient(create_app(settings, engine, scheduler=False)) as client:
        assert client.get("/dev/outbox").status_code == 200
        client.post("/subscribe", data={"email": "newcomer@example.com", "name": "Nia"})
        [eml] = wait_for_files(settings.outbox_dir, 1)
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
        html = client.get(f"/dev/outbox/{eml.name}/html")
        assert '<base target="_top">' in html.text and "Confirm my subscription" in html.text
        assert client.get(f"/dev/outbox/{eml.name}/raw").content == raw
        assert client.get("/dev/outbox/..%2Fsecret").status_code == 404
        assert client.get("/dev/outbox/nothing.eml").status_code == 404


def test_no_dev_outbox_when_a_relay_is_configured(app_client: TestClient) -> None:
    assert app_client.get("/dev/outbox").status_code == 404

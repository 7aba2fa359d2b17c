"""The daily send happens by itself: the scheduler inside `broadside serve` catches up on a
missed send at start, and fires at SEND_TIME."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.web.app import create_app
from tests import processes
from tests.conftest import make_settings
from tests.daily import add_readers
from tests.helpers import eventually, sends_done
from tests.smtp_server import SmtpTestServer


def test_serve_catches_up_on_a_send_missed_while_down(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=2, pending=1)
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        **processes.send_time_passed(tmp_path / "columns"),
    )
    with TestClient(create_app(settings, engine, scheduler=True)):
        assert eventually(lambda: sends_done(engine), timeout=20)
    received = smtp_server.received
    assert sorted(r.rcpt_tos[0] for r in received) == ["active0@example.com", "active1@example.com"]
    assert len(smtp_server.received) == 2


@pytest.mark.slow
def test_scheduler_fires_at_send_time_by_itself(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    fire_at, send_time = processes.send_time_ahead(tmp_path / "columns", start_up=15)
    add_readers(engine, active=1)
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url, **send_time)
    with TestClient(create_app(settings, engine, scheduler=True)):
        [mail] = smtp_server.wait_for(1, timeout=150)
    assert mail.at >= fire_at  # nothing before SEND_TIME
    assert dt.datetime.now(dt.UTC) >= fire_at
    assert mail.rcpt_tos == ["active0@example.com"]

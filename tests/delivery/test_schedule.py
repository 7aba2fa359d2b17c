"""The daily send happens by itself: the scheduler inside `broadside serve` catches up on a
missed send at start, and fires at SEND_TIME."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.web.app import create_app
from tests.conftest import SEED, make_settings
from tests.delivery.test_daily_send import add_readers
from tests.smtp_server import SmtpTestServer


def todays_column(folder: Path) -> dt.date:
    today = dt.datetime.now(dt.UTC).date()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"world-view-{today.isoformat()}.txt").write_text(SEED.read_text())
    return today


def test_serve_catches_up_on_a_send_missed_while_down(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    now = dt.datetime.now(dt.UTC)
    if now.hour == 0 and now.minute < 2:
        pytest.skip("a send time one minute ago would be yesterday")
    todays_column(tmp_path / "columns")
    add_readers(engine, active=2, pending=1)
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        columns_dir=tmp_path / "columns",
        send_time=(now - dt.timedelta(minutes=1)).strftime("%H:%M"),
        timezone="UTC",
    )
    with TestClient(create_app(settings, engine, scheduler=True)):
        received = smtp_server.wait_for(2, timeout=20)
        time.sleep(0.5)
    assert sorted(r.rcpt_tos[0] for r in received) == ["active0@example.com", "active1@example.com"]
    assert len(smtp_server.received) == 2


@pytest.mark.slow
def test_scheduler_fires_at_send_time_by_itself(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    now = dt.datetime.now(dt.UTC)
    fire_at = (now + dt.timedelta(minutes=2 if now.second > 45 else 1)).replace(
        second=0, microsecond=0
    )
    if fire_at.date() != now.date():
        pytest.skip("the next minute is tomorrow")
    todays_column(tmp_path / "columns")
    add_readers(engine, active=1)
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        columns_dir=tmp_path / "columns",
        send_time=fire_at.strftime("%H:%M"),
        timezone="UTC",
    )
    with TestClient(create_app(settings, engine, scheduler=True)):
        time.sleep(1)
        assert smtp_server.received == []  # nothing before SEND_TIME
        [mail] = smtp_server.wait_for(1, timeout=150)
    assert dt.datetime.now(dt.UTC) >= fire_at
    assert mail.rcpt_tos == ["active0@example.com"]

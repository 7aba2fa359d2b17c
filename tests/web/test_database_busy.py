"""A database that is busy or down is never a 500: SQLite's write lock is waited out within
the busy timeout and answered 503 with Retry-After past it; an unreachable PostgreSQL is
503 too; nothing is half-written."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.db import make_engine
from service.web.app import create_app
from tests.conftest import TABLES, make_settings
from tests.helpers import free_port

WRITERS = 16


@contextmanager
def write_lock_held(engine: Engine) -> Iterator[None]:
    """Another process's writer: a plain sqlite3 connection inside BEGIN IMMEDIATE."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    other = sqlite3.connect(str(engine.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def test_writers_wait_for_a_lock_held_within_the_busy_timeout(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(subscribe_per_ip_per_hour=100)

    def subscribe(i: int) -> tuple[int, float]:
        response = client.post("/subscribe", data={"email": f"reader{i}@example.com"})
        return response.status_code, time.monotonic()

    with ThreadPoolExecutor(WRITERS) as pool:
        with write_lock_held(engine):
            answers = [pool.submit(subscribe, i) for i in range(WRITERS)]
            time.sleep(1.0)
            released = time.monotonic()
        statuses, finished = zip(*(a.result() for a in answers), strict=True)

    assert statuses == (200,) * WRITERS
    assert min(finished) >= released, "each waited for the lock rather than failing"
    assert rows(engine)["subscribers"] == WRITERS


def test_a_lock_held_past_the_busy_timeout_is_a_503_that_writes_nothing(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    impatient = make_engine(database_url, busy_timeout=0.2)
    settings = make_settings(database_url, tmp_path / "var", smtp_url="smtp://127.0.0.1:1")
    client = TestClient(create_app(settings, impatient, scheduler=False))
    try:
        with write_lock_held(engine):
            page = client.post("/subscribe", data={"email": "reader@example.com"})
            api = client.post("/api/v1/subscriptions", json={"email": "reader@example.com"})
    finally:
        impatient.dispose()

    assert page.status_code == 503 and page.headers["retry-after"] == "5"
    assert "Nothing was saved" in page.text
    assert api.status_code == 503 and api.headers["retry-after"] == "5"
    assert "try again" in api.json()["detail"].lower()
    assert rows(engine) == dict.fromkeys(TABLES, 0)


def test_an_unreachable_postgresql_is_a_503(tmp_path: Path) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/broadside"
    down = make_engine(closed, connect_args={"connect_timeout": 2})
    settings = make_settings(closed, tmp_path / "var", smtp_url="smtp://127.0.0.1:1")
    client = TestClient(create_app(settings, down, scheduler=False))
    try:
        page = client.post("/subscribe", data={"email": "reader@example.com"})
        api = client.post("/api/v1/subscriptions", json={"email": "reader@example.com"})
    finally:
        down.dispose()

    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
    assert page.headers["retry-after"] == "5" and "Busy for a moment" in page.text
    assert api.status_code == 503 and api.headers["content-type"] == "application/json"
    assert api.headers["retry-after"] == "5"

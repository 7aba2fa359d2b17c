"""GET /readyz: 200 when the database answers, its schema is the code's and the relay answers
EHLO; 503 naming what failed; the relay asked at most every 30 seconds. /healthz stays
liveness only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.db import make_engine
from service.migrate import upgrade
from service.readiness import RELAY_CHECK_INTERVAL
from service.web.app import create_app
from tests.conftest import make_settings
from tests.helpers import free_port
from tests.smtp_server import SmtpTestServer


class Seconds:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_when_the_database_its_schema_and_the_relay_answer(
    make_client: Callable[..., TestClient],
) -> None:
    answer = make_client().get("/readyz")

    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ok",
        "checks": {"database": "ok", "migrations": "ok", "relay": "ok"},
        "failing": [],
    }


def test_a_relay_that_does_not_answer_is_named(
    make_client: Callable[..., TestClient], smtp_server: SmtpTestServer
) -> None:
    smtp_server.stop()  # its port is closed now
    client = make_client()

    answer = client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["failing"] == ["relay"]
    assert answer.json()["checks"]["relay"] == "unreachable"
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_the_relays_answer_is_kept_for_thirty_seconds(
    make_client: Callable[..., TestClient], smtp_server: SmtpTestServer
) -> None:
    client = make_client()
    clock = Seconds()
    client.app.state.readiness.clock = clock  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 200

    smtp_server.stop()
    clock.now += RELAY_CHECK_INTERVAL - 1
    kept = client.get("/readyz")
    clock.now += 1
    asked_again = client.get("/readyz")

    assert kept.status_code == 200
    assert asked_again.status_code == 503 and asked_again.json()["failing"] == ["relay"]


def test_a_database_behind_the_code_is_named(tmp_path: Path, smtp_server: SmtpTestServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(database_url)
    upgrade(engine, "0003")
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)

    with TestClient(create_app(settings, engine, scheduler=False)) as client:
        answer = client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["failing"] == ["migrations"]
    assert answer.json()["checks"]["migrations"].startswith("behind (database at 0003, code at")


def test_a_database_that_does_not_answer_is_named_not_a_500(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    database_url = f"postgresql://broadside@127.0.0.1:{free_port()}/none"
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)

    with TestClient(create_app(settings, scheduler=False)) as client:
        answer = client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["failing"] == ["database", "migrations"]
    assert answer.json()["checks"]["relay"] == "ok"

"""Logs: human-readable text or, with LOG_FORMAT=json, one JSON object a line; every line
written while a request is handled carries its request id, the one the response returns;
no line names a reader's full address."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service import logs
from service.config import Settings
from service.db import make_engine
from service.migrate import upgrade
from service.web.app import create_app
from tests.conftest import make_settings
from tests.daily import add_readers, run_job
from tests.helpers import eventually
from tests.processes import environment, serve_processes
from tests.smtp_server import SmtpTestServer
from tests.web.live import serving
from tests.web.test_logs import uvicorn_output


@contextmanager
def our_log(settings: Settings) -> Iterator[io.StringIO]:
    """What the root handler that `broadside` commands install writes, while the block runs."""
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.configure(settings, out)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def json_lines(*outputs: io.StringIO) -> list[dict[str, object]]:
    """Every line written, each parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for out in outputs for line in out.getvalue().splitlines() if line]


def test_json_lines_carry_the_request_id_the_response_returned(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, log_format="json"
    )
    app = create_app(settings, engine, scheduler=False)

    with (
        our_log(settings) as ours,
        serving(app, settings) as base_url,
        httpx.Client(base_url=base_url) as client,
        uvicorn_output() as theirs,
    ):
        refused = client.post("/subscribe", headers={"Origin": "https://attacker.example"})
        request_id = refused.headers["X-Request-ID"]
        eventually(lambda: request_id in theirs.getvalue(), 5.0, every=0.02)
    lines = json_lines(ours, theirs)

    assert refused.status_code == 403 and len(request_id) == 32
    [refusal] = [line for line in lines if line["logger"] == "service.web.cross_site"]
    assert refusal["level"] == "INFO" and refusal["request_id"] == request_id
    assert "refused a cross-site POST /subscribe" in str(refusal["message"])
    [access] = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access["request_id"] == request_id
    assert '"POST /subscribe HTTP/1.1" 403' in str(access["message"])
    assert {"time", "level", "logger", "message", "request_id"} <= set(access)


def test_broadside_serve_with_json_logs_writes_nothing_but_json_lines(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    database_url = f"sqlite:///{tmp_path / 'broadside.db'}"
    upgrade(make_engine(database_url))
    env = environment(
        database_url, tmp_path / "var", smtp_server.url, log_format="json", log_level="INFO"
    )

    with serve_processes(1, env, tmp_path) as [url]:
        refused = httpx.post(f"{url}/subscribe", headers={"Origin": "https://attacker.example"})
        request_id = refused.headers["X-Request-ID"]
    [stderr] = tmp_path.glob("serve-*.log")
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]

    assert any(str(line["message"]).startswith("Broadside on http://") for line in lines)
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    [refusal] = [line for line in lines if line["logger"] == "service.web.cross_site"]
    assert refusal["request_id"] == request_id


def test_a_sane_request_id_is_kept_and_any_other_replaced(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()

    kept = client.get("/healthz", headers={"X-Request-ID": "proxy-42.a:b_c"})
    too_long = client.get("/healthz", headers={"X-Request-ID": "x" * 200})
    spaced = client.get("/healthz", headers={"X-Request-ID": "a b"})
    fresh = client.get("/healthz")

    assert kept.headers["X-Request-ID"] == "proxy-42.a:b_c"
    for answer in (too_long, spaced, fresh):
        assert len(answer.headers["X-Request-ID"]) == 32
        assert answer.headers["X-Request-ID"].isalnum()


def test_a_refused_delivery_is_logged_at_info_without_the_full_address(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    [address] = add_readers(engine, active=1)["active"]
    smtp_server.reply_to_rcpt(address, f"550 5.1.1 <{address}>: Recipient address rejected")

    with our_log(settings) as out:
        run_job(engine, settings)
    logged = out.getvalue()

    [line] = [line for line in logged.splitlines() if "refused for good" in line]
    assert " INFO service.delivery.worker: delivery " in line
    assert "<a***@example.com>" in line
    assert address not in logged


def test_a_json_line_carries_the_extra_fields_and_the_traceback_masked(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(database_url, tmp_path / "var", log_format="json")
    log = logging.getLogger("service.tests")

    with our_log(settings) as out:
        try:
            raise ValueError("no such mailbox: ada.lovelace@example.com")
        except ValueError:
            log.exception("handing over to %s failed", "ada.lovelace@example.com", extra={"n": 3})
    [line] = json_lines(out)

    assert line["level"] == "ERROR" and line["logger"] == "service.tests"
    assert line["message"] == "handing over to a***@example.com failed"
    assert line["n"] == 3 and line["request_id"] is None
    assert "ValueError: no such mailbox: a***@example.com" in str(line["exc_info"])
    assert "lovelace" not in out.getvalue()


def test_addresses_are_masked_to_their_first_letter_and_domain() -> None:
    assert logs.mask_address("ada@example.com") == "a***@example.com"
    assert (
        logs.mask_addresses("RCPT 550: <bob.smith+news@mail.example.org> unknown, ask x@y.io")
        == "RCPT 550: <b***@mail.example.org> unknown, ask x***@y.io"
    )
    assert logs.mask_addresses("GET /columns/2016-02-04 HTTP/1.1") == (
        "GET /columns/2016-02-04 HTTP/1.1"
    )

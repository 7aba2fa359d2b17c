"""GET /metrics: what a real send and a real subscribe, confirm and unsubscribe did, read back
with prometheus-client's own parser; behind the admin token, or on METRICS_PORT instead; the
request timings of several processes summed through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from service.config import Settings
from service.db import make_engine
from service.metrics import registry
from service.migrate import upgrade
from tests.daily import add_readers, run_job
from tests.helpers import eventually, free_port, links, outbox_idle, path_of
from tests.processes import environment, serve_processes
from tests.smtp_server import SmtpTestServer

TOKEN = "metrics-admin-token-long-enough"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parsed(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, as prometheus-client's parser reads it."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parsed(response.text)


def test_the_scrape_counts_what_readers_and_the_daily_send_did(
    make_client: Callable[..., TestClient],
    engine: Engine,
    settings: Settings,
    smtp_server: SmtpTestServer,
) -> None:
    client = make_client(admin_token=TOKEN)
    readers = add_readers(engine, active=3)["active"]
    smtp_server.reply_to_rcpt(readers[2], "550 5.1.1 no such user here")
    # A real double opt-in: the form, the mail, the confirmation button.
    assert client.post("/subscribe", data={"email": "ada@example.com"}).status_code == 200
    [confirmation] = smtp_server.wait_for(1, to="ada@example.com")
    assert client.post(path_of(links(confirmation, "/confirm/")[0])).status_code == 200
    run_job(engine, settings)  # the column to the three who can take it, one refusal
    [column] = [m for m in smtp_server.messages_to("ada@example.com") if m is not confirmation]
    unsubscribe = path_of(links(column, "/unsubscribe/")[0])
    assert client.post(unsubscribe, content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert eventually(lambda: outbox_idle(engine), 5.0)

    found = scrape(client)

    assert value(found, "broadside_database_up") == 1
    assert value(found, "broadside_messages_sent_total", mail="column") == 3
    assert value(found, "broadside_messages_sent_total", mail="transactional") == 1
    assert value(found, "broadside_messages_failed_total", mail="column", reason="mailbox") == 1
    assert value(found, "broadside_messages_deferred", mail="column") == 0
    assert value(found, "broadside_ledger_deliveries", state="sent") == 3
    assert value(found, "broadside_ledger_deliveries", state="failed") == 1
    assert value(found, "broadside_ledger_deliveries", state="pending") == 0
    assert value(found, "broadside_outbox_depth") == 0
    assert value(found, "broadside_bounces_total", kind="hard", source="at-send") == 1
    assert value(found, "broadside_consents_total", action="subscribe") == 1
    assert value(found, "broadside_consents_total", action="confirm") == 1
    assert value(found, "broadside_consents_total", action="one-click-unsubscribe") == 1
    assert value(found, "broadside_readers", status="active") == 2
    assert value(found, "broadside_readers", status="bounced") == 1
    assert value(found, "broadside_readers", status="unsubscribed") == 1
    assert value(found, "broadside_latest_send_deliveries", state="readers") == 4
    assert value(found, "broadside_latest_send_deliveries", state="sent") == 3
    assert value(found, "broadside_latest_send_deliveries", state="remaining") == 0
    info = [labels for (name, labels) in found if name == "broadside_latest_send_info"]
    assert info == [frozenset({("id", "1"), ("date", "2016-02-04"), ("status", "done")})]
    assert 0 <= value(found, "broadside_latest_send_duration_seconds") < 60


def test_metrics_need_the_admin_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(admin_token=TOKEN)
    wrong = {"Authorization": "Bearer not-the-token"}

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=wrong).status_code == 401
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_without_an_admin_token_metrics_are_off(make_client: Callable[..., TestClient]) -> None:
    assert make_client().get("/metrics", headers=AUTH).status_code == 503


def test_request_timings_name_the_route_template_never_the_token(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_token=TOKEN)
    token = "MTIz.c2VjcmV0LWxpbmstdG9rZW4"
    assert client.get(f"/unsubscribe/{token}").status_code == 400
    client.get("/no/such/page")

    scraped = client.get("/metrics", headers=AUTH).text
    found = parsed(scraped)

    count = "broadside_http_request_duration_seconds_count"
    assert value(found, count, method="GET", route="/unsubscribe/{token}", status="4xx") >= 1
    assert value(found, count, method="GET", route="unmatched", status="4xx") >= 1
    assert token not in scraped and "/no/such/page" not in scraped


def test_with_a_metrics_port_the_app_hides_metrics_and_the_port_serves_them(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    port = free_port()
    add_readers(engine, active=2, pending=1)
    client = make_client(admin_token=TOKEN, metrics_port=port)
    client.get("/healthz")

    assert client.get("/metrics", headers=AUTH).status_code == 404
    served = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert served.status_code == 200
    found = parsed(served.text)
    assert value(found, "broadside_readers", status="active") == 2
    assert value(found, "broadside_readers", status="pending") == 1
    count = "broadside_http_request_duration_seconds_count"
    assert value(found, count, method="GET", route="/healthz", status="2xx") >= 1


def test_a_database_that_does_not_answer_is_a_zero_not_a_failed_scrape() -> None:
    nowhere = make_engine(f"postgresql+psycopg://broadside@127.0.0.1:{free_port()}/none")

    found = parsed(generate_latest(registry(nowhere)).decode())

    assert value(found, "broadside_database_up") == 0
    assert not any(name.startswith("broadside_readers") for name, _ in found)


def test_processes_sharing_a_multiprocess_folder_report_each_others_requests(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    database_url = f"sqlite:///{tmp_path / 'broadside.db'}"
    upgrade(make_engine(database_url))
    env = environment(database_url, tmp_path / "var", smtp_server.url, admin_token=TOKEN)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")

    with serve_processes(2, env, tmp_path) as (first, second):
        for _ in range(3):
            assert httpx.get(f"{second}/columns", timeout=5).status_code == 200
        from_first = httpx.get(f"{first}/metrics", headers=AUTH, timeout=5)

    found = parsed(from_first.text)
    count = "broadside_http_request_duration_seconds_count"
    assert value(found, count, method="GET", route="/columns", status="2xx") == 3
    assert value(found, "broadside_database_up") == 1

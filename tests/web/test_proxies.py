"""X-Forwarded-For counts only when it comes from TRUSTED_PROXIES: behind a proxy each reader
has their own rate limit and consent record; from anyone else the header is ignored.
Checked against a real uvicorn server configured as `broadside serve` configures it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.models import Consent, Subscriber
from service.web.app import create_app
from tests.conftest import make_settings
from tests.smtp_server import SmtpTestServer
from tests.web.live import serving

READER_A = "203.0.113.7"
READER_B = "198.51.100.9"
# A proxy connecting from its own address, like one on a compose network: not the
# 127.0.0.1 that uvicorn trusts when told nothing.
PROXY = "127.0.0.2"


def subscribe(client: httpx.Client, email: str, forwarded_for: str) -> int:
    response = client.post(
        "/subscribe", data={"email": email}, headers={"X-Forwarded-For": forwarded_for}
    )
    return response.status_code


def consent_ip(engine: Engine, email: str) -> str | None:
    with Session(engine) as session:
        query = select(Consent.ip).join(Subscriber).where(Subscriber.email == email)
        return session.exec(query).one()


def run_four_subscriptions(
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    smtp_url: str,
    *,
    peer: str,
    trusted_proxies: str,
) -> list[int]:
    """Reader A subscribes three addresses, then reader B one, through a proxy at `peer`."""
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_url,
        subscribe_per_ip_per_hour=2,
        trusted_proxies=trusted_proxies,
    )
    app = create_app(settings, engine, scheduler=False)
    proxy = httpx.HTTPTransport(local_address=peer)
    with (
        serving(app, settings) as base_url,
        httpx.Client(base_url=base_url, transport=proxy) as client,
    ):
        from_a = [subscribe(client, f"a{i}@example.com", READER_A) for i in range(3)]
        return [*from_a, subscribe(client, "b@example.com", READER_B)]


@pytest.mark.parametrize(
    ("peer", "trusted_proxies"),
    [("127.0.0.1", "127.0.0.1"), (PROXY, "127.0.0.2/31")],
    ids=["loopback", "network"],
)
def test_behind_a_trusted_proxy_each_reader_has_their_own_limit(
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    peer: str,
    trusted_proxies: str,
) -> None:
    statuses = run_four_subscriptions(
        database_url, engine, tmp_path, smtp_server.url, peer=peer, trusted_proxies=trusted_proxies
    )

    assert statuses == [200, 200, 429, 200], "A's third is over A's limit; B has a bucket of B's"
    assert consent_ip(engine, "a0@example.com") == READER_A
    assert consent_ip(engine, "b@example.com") == READER_B


def test_the_header_from_an_untrusted_peer_is_ignored(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    statuses = run_four_subscriptions(
        database_url,
        engine,
        tmp_path,
        smtp_server.url,
        peer="127.0.0.1",
        trusted_proxies="10.9.9.9",
    )

    assert statuses == [200, 200, 429, 429], "every request counts against the peer"
    assert consent_ip(engine, "a0@example.com") == "127.0.0.1"

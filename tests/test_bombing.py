"""Subscription bombing: per-mailbox limits by the hour and by the day, shared by the
spellings of one mailbox, and exact under parallel requests on both databases."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import subscriptions
from service.config import Settings
from service.context import AppContext, Requester, build_context
from service.db import transaction
from service.errors import RateLimited
from service.models import OutboxMail, Subscriber
from tests.conftest import Clock
from tests.helpers import eventually, outbox_idle
from tests.smtp_server import SmtpTestServer

THREADS = 20
# Twenty spellings of one mailbox, as a bombing script would vary them.
SPELLINGS = ["a.b+news{}@example.com", "ab+x{}@example.com", "A.B+{}@Example.com", "ab@EXAMPLE.COM"]
VARIANTS = [f.format(i) for i, f in zip(range(THREADS), itertools.cycle(SPELLINGS), strict=False)]


@pytest.mark.parametrize(
    "address",
    ["a.b+news@example.com", "ab+x@example.com", "A.B@example.com", "ab@example.com", "a.b+@x.y"],
)
def test_spellings_of_one_mailbox_share_one_limit_key(address: str) -> None:
    expected = "ab@x.y" if address.endswith("x.y") else "ab@example.com"
    assert subscriptions.mailbox_key(subscriptions.normalize_address(address)) == expected


def test_variants_of_one_mailbox_share_the_hourly_limit(
    app_client: TestClient, engine: Engine
) -> None:
    variants = ["a.b+news@example.com", "ab+x@example.com", "A.B@example.com", "ab@example.com"]
    codes = [app_client.post("/subscribe", data={"email": v}).status_code for v in variants]
    assert codes == [200, 200, 200, 429]
    with Session(engine) as session:
        stored = [s.email for s in session.exec(select(Subscriber).order_by(Subscriber.id))]  # type: ignore[arg-type]
    assert stored == ["a.b+news@example.com", "ab+x@example.com", "a.b@example.com"]


def subscribe_at(engine: Engine, ctx: AppContext, email: str, now: datetime) -> int | None:
    """One subscribe request at `now`, from a client of its own: the Retry-After it was
    refused with, or None when it went through."""
    who = Requester(ip=f"192.0.2.{now.minute}")
    try:
        with transaction(engine) as session:
            subscriptions.subscribe(session, ctx, email=email, name=None, who=who, now=now)
    except RateLimited as exc:
        return exc.retry_after
    return None


def test_a_mailbox_gets_confirmation_mails_no_faster_than_its_caps_refill(
    settings: Settings, engine: Engine, clock: Clock
) -> None:
    ctx = build_context(settings)
    assert (settings.subscribe_per_address_per_hour, settings.subscribe_per_address_per_day) == (
        3,
        5,
    )
    start = clock.utcnow()

    def at(minutes: int, email: str = "victim@example.com") -> int | None:
        return subscribe_at(engine, ctx, email, start + timedelta(minutes=minutes))

    # Token buckets: 3 at once, then one more every 20 minutes (3 per hour); 5 at once,
    # then one more every 4.8 hours (5 per day).
    assert [at(0), at(1), at(2, "vic.tim+1@example.com")] == [None, None, None]
    hourly = at(3)  # 0.15 of a token back: the next one is 17 minutes away
    assert hourly is not None and 16 * 60 < hourly <= 17 * 60 + 1
    assert [at(61), at(62, "victim+2@example.com")] == [None, None]
    daily = at(63, "v.ictim@example.com")  # 0.22 of a daily token back: 3.75 hours to go
    assert daily is not None and 3.5 * 3600 < daily <= 4 * 3600
    assert at(63 + daily // 60 + 1) is None  # as Retry-After said
    with Session(engine) as session:
        confirmations = session.exec(select(OutboxMail).where(OutboxMail.kind == "confirm")).all()
    assert len(confirmations) == 6


@pytest.mark.parametrize("window", ["hour", "day"])
def test_parallel_requests_for_one_mailbox_send_exactly_the_limit(
    window: str,
    make_client: Callable[..., TestClient],
    engine: Engine,
    smtp_server: SmtpTestServer,
) -> None:
    overrides: dict[str, object] = {"subscribe_per_ip_per_hour": 1000}
    if window == "day":
        overrides["subscribe_per_address_per_hour"] = 1000
    client = make_client(**overrides)
    s = client.app.state.ctx.settings  # type: ignore[attr-defined]
    limit = (
        s.subscribe_per_address_per_hour if window == "hour" else s.subscribe_per_address_per_day
    )
    start = threading.Barrier(THREADS)

    def post(i: int) -> httpx.Response:
        start.wait()
        if i % 2:
            return client.post("/subscribe", data={"email": VARIANTS[i]})
        return client.post("/api/v1/subscriptions", json={"email": VARIANTS[i]})

    with ThreadPoolExecutor(THREADS) as pool:
        responses = list(pool.map(post, range(THREADS)))
    codes = [r.status_code for r in responses]
    assert len([c for c in codes if c in (200, 202)]) == limit, codes
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == THREADS - limit, codes
    assert all(int(r.headers["Retry-After"]) > 0 for r in refused)
    with Session(engine) as session:
        queued = session.exec(select(OutboxMail).where(OutboxMail.kind == "confirm")).all()
    assert len(queued) == limit
    assert eventually(lambda: outbox_idle(engine), timeout=10)  # and nothing more follows
    assert len(smtp_server.received) == limit

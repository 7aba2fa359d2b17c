"""Scaling out: workers that share DELIVERY_RATE through the database, several relays by
weight (one stopped mid-send, one at its hourly cap) with the ledger naming the relay of each
message, schedulers racing in parallel that make one send, and the shared rate buckets
forgotten once idle."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.db import transaction
from service.delivery.worker import SendWorker
from service.limits import take
from service.models import Delivery, RateBucket, Send
from service.scheduler import daily_job
from tests.conftest import make_settings
from tests.daily import AT_SEND_TIME, add_readers, courier, dispatcher, start_seed_send
from tests.smtp_server import SmtpTestServer


@pytest.fixture
def second_server() -> Iterator[SmtpTestServer]:
    server = SmtpTestServer()
    server.start()
    yield server
    server.stop()


def label(server: SmtpTestServer) -> str:
    return f"127.0.0.1:{server.port}"


def deliver(engine: Engine, settings: Settings, send_id: int, workers: int = 1) -> list[str]:
    """Run `workers` SendWorkers on one send until it is done; their names."""
    running = [SendWorker(courier(engine, settings)) for _ in range(workers)]

    async def together() -> None:
        await asyncio.gather(*(worker.run(send_id) for worker in running))

    asyncio.run(together())
    return [worker.name for worker in running]


def ledger_relays(engine: Engine) -> dict[str, str | None]:
    with Session(engine) as session:
        return {d.email: d.relay for d in session.exec(select(Delivery))}


def received_by(*servers: SmtpTestServer) -> Counter[str]:
    return sum((server.per_recipient() for server in servers), Counter())


def test_two_workers_together_stay_within_the_delivery_rate(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    rate, readers = 20.0, 60
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        delivery_rate=rate,
        delivery_batch_size=5,  # both workers get rows to claim
        delivery_connections=2,
    )
    add_readers(engine, active=readers)
    send = start_seed_send(engine, settings)
    started = time.monotonic()
    names = deliver(engine, settings, send.id or 0, workers=2)
    elapsed = time.monotonic() - started
    # The shared bucket starts with one batch (half a second) and refills at the rate: each
    # worker alone would have taken its own 20/s, and both together finished in ~1.5 s.
    assert elapsed >= (readers - rate * 0.5) / rate
    assert sorted(smtp_server.per_recipient().values()) == [1] * readers
    with Session(engine) as session:
        claimed = Counter(d.claimed_by for d in session.exec(select(Delivery)))
    assert set(claimed) == set(names), "both workers delivered part of the send"


def test_weights_split_the_traffic_and_the_ledger_names_each_relay(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    second_server: SmtpTestServer,
) -> None:
    readers = 80
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_urls=f"{smtp_server.url};weight=3, {second_server.url};weight=1",
        delivery_connections=4,  # three connections on the first relay, one on the second
    )
    for server in (smtp_server, second_server):  # a relay's latency, not the test's CPU,
        server.handler.data_delay = 0.02  # is what each connection waits on
    add_readers(engine, active=readers)
    send = start_seed_send(engine, settings)
    deliver(engine, settings, send.id or 0)
    heavy, light = len(smtp_server.received), len(second_server.received)
    assert heavy + light == readers and heavy > 1.5 * light > 0, (heavy, light)
    relays = ledger_relays(engine)
    assert {e for e, r in relays.items() if r == label(smtp_server)} == set(
        smtp_server.per_recipient()
    )
    assert {e for e, r in relays.items() if r == label(second_server)} == set(
        second_server.per_recipient()
    )


def test_a_relay_stopped_mid_send_leaves_the_rest_to_the_other(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    second_server: SmtpTestServer,
) -> None:
    readers = 60
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_urls=f"{smtp_server.url}, {second_server.url}",
        delivery_connections=2,
        delivery_rate=30,  # two seconds of sending: time to stop a relay in the middle
    )
    add_readers(engine, active=readers)
    send = start_seed_send(engine, settings)
    worker = threading.Thread(target=deliver, args=(engine, settings, send.id or 0))
    worker.start()
    second_server.wait_for(5)
    second_server.stop()
    stopped_with = len(second_server.received)
    worker.join(timeout=60)
    assert not worker.is_alive()
    got = received_by(smtp_server, second_server)
    assert sorted(got) == sorted(f"active{i}@example.com" for i in range(readers))
    assert sum(got.values()) - readers <= 1, "at most the one message in flight on it, twice"
    assert len(smtp_server.received) >= readers - stopped_with
    took = {label(smtp_server): smtp_server, label(second_server): second_server}
    relays = ledger_relays(engine)
    assert all(took[r or ""].messages_to(e) for e, r in relays.items()), "the ledger's relay has it"
    with Session(engine) as session:
        assert {d.status for d in session.exec(select(Delivery))} == {"sent"}


def test_a_relay_at_its_hourly_cap_leaves_the_rest_to_the_other(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    second_server: SmtpTestServer,
) -> None:
    readers = 20
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_urls=f"{smtp_server.url};weight=10;per_hour=5, {second_server.url};weight=1",
        delivery_connections=2,
    )
    add_readers(engine, active=readers)
    send = start_seed_send(engine, settings)
    deliver(engine, settings, send.id or 0, workers=2)  # the cap holds for both together
    assert len(smtp_server.received) == 5
    assert len(second_server.received) == readers - 5
    assert Counter(ledger_relays(engine).values()) == {
        label(smtp_server): 5,
        label(second_server): readers - 5,
    }


def test_schedulers_racing_in_parallel_make_exactly_one_send(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    schedulers, readers = 4, 30
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    add_readers(engine, active=readers)
    start = threading.Barrier(schedulers)

    def fire() -> None:  # each a process's scheduler of its own, firing at SEND_TIME
        job = daily_job(dispatcher(engine, settings), clock=lambda: AT_SEND_TIME)
        start.wait()
        asyncio.run(job())

    threads = [threading.Thread(target=fire) for _ in range(schedulers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with Session(engine) as session:
        made = session.exec(select(Send)).all()
    assert len(made) == 1 and made[0].created_at <= dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert sorted(smtp_server.per_recipient().values()) == [1] * readers


def test_the_heal_forgets_rate_buckets_once_idle_past_their_window(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    second_server: SmtpTestServer,
) -> None:
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_urls=f"{smtp_server.url};per_hour=100, {second_server.url}",
        delivery_rate=50,
    )
    add_readers(engine, active=10)
    send = start_seed_send(engine, settings)
    deliver(engine, settings, send.id or 0)
    relay_cap, send_rate = f"relay:{label(smtp_server)}", f"delivery:send:{send.id}"
    assert bucket_keys(engine) == {relay_cap, send_rate}
    finished = dt.datetime.now(dt.UTC)

    heal_at(engine, settings, finished + dt.timedelta(hours=23))
    assert bucket_keys(engine) == {relay_cap, send_rate}, "a day's count may still need them"
    with transaction(engine) as session:  # the relay's cap is in use again, an hour later
        take(session, relay_cap, capacity=100, per_second=100 / 3600, now=utcnow(hours=24))
    heal_at(engine, settings, finished + dt.timedelta(hours=26))
    assert bucket_keys(engine) == {relay_cap}, "the finished send's bucket is gone"
    heal_at(engine, settings, finished + dt.timedelta(hours=50))
    assert bucket_keys(engine) == set()


def heal_at(engine: Engine, settings: Settings, now: dt.datetime) -> None:
    """What a worker process's heal does at `now` (a new process each time: the heal looks
    for idle buckets at most hourly)."""

    async def heal() -> None:
        runs = dispatcher(engine, settings)
        await runs.heal(now)
        await runs.wait(None)

    asyncio.run(heal())


def utcnow(*, hours: float) -> dt.datetime:
    """Naive UTC, `hours` from now."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=hours)


def bucket_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(RateBucket.key)))

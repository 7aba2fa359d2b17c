"""Faults during a send: throttling (4xx), refusals (5xx), dropped and stalled connections,
a relay that goes away for 30 s or refuses everything, and several workers on one send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.delivery import sends
from service.delivery.worker import SendWorker
from service.mail.smtp import relay_target
from service.models import Delivery, Subscriber, SubscriberStatus
from tests import processes
from tests.conftest import make_settings
from tests.daily import SEED_DAY, add_readers, courier, run_job, start_seed_send
from tests.faults.relay import FaultyRelay
from tests.helpers import eventually, reader
from tests.smtp_server import SmtpTestServer


def test_throttled_refused_and_dropped_deliveries_end_correctly(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, delivery_connections=3
    )
    readers = add_readers(engine, active=40)["active"]
    throttled, refused = readers[:4], readers[4:6]
    for address in throttled:
        smtp_server.reply_to_rcpt(address, "451 4.7.1 Slow down", "421 4.7.0 Try again later")
    for address in refused:
        smtp_server.reply_to_rcpt(address, "550 5.1.1 No such mailbox")
    smtp_server.handler.drop_every = 9  # vanish mid-DATA now and then

    run_job(engine, settings)

    got = smtp_server.per_recipient()
    assert set(got) == set(readers) - set(refused)
    assert all(count == 1 for count in got.values()), got  # a dropped DATA was never stored
    with Session(engine) as session:
        rows = {d.email: d for d in session.exec(select(Delivery))}
        subscribers = {s.email: s for s in session.exec(select(Subscriber))}
    for address in refused:
        assert rows[address].status == "failed" and "550" in (rows[address].last_error or "")
        assert subscribers[address].status == SubscriberStatus.bounced
        assert "550" in (subscribers[address].bounce_reason or "")
    for address in throttled:
        assert rows[address].status == "sent" and rows[address].attempts == 3
    assert all(
        subscribers[a].status == SubscriberStatus.active for a in readers if a not in refused
    )


def test_transient_failure_past_the_deadline_fails_without_suppressing(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, retry_deadline=2
    )
    [stuck, fine] = add_readers(engine, active=2)["active"]
    smtp_server.reply_to_rcpt(stuck, *["451 4.3.0 Mailbox busy"] * 100)
    run_job(engine, settings)
    assert [r.rcpt_tos[0] for r in smtp_server.received] == [fine]
    with Session(engine) as session:
        row = session.exec(select(Delivery).where(Delivery.email == stuck)).one()
    assert row.status == "failed" and "retry deadline" in (row.last_error or "")
    assert reader(engine, stuck).status == SubscriberStatus.active  # 4xx is not a bounce


def test_smtp_down_at_send_time_delivers_when_it_returns(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    readers = add_readers(engine, active=5)["active"]
    smtp_server.stop()

    async def send_while_server_returns() -> None:
        job = asyncio.create_task(asyncio.to_thread(run_job, engine, settings))
        await asyncio.sleep(1.5)
        smtp_server.start()
        await job

    asyncio.run(send_while_server_returns())
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(readers)


def test_several_workers_share_one_send_without_duplicates(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, delivery_batch_size=10
    )
    readers = add_readers(engine, active=300)["active"]
    send = start_seed_send(engine, settings)
    assert relay_target(settings) is not None

    async def three_workers() -> list[sends.SendCounts]:
        return await asyncio.gather(
            *(SendWorker(courier(engine, settings)).run(send.id or 0) for _ in range(3))
        )

    results = asyncio.run(three_workers())
    got = smtp_server.per_recipient()
    assert sorted(got) == sorted(readers) and set(got.values()) == {1}
    assert all(r == sends.SendCounts(total=300, sent=300, failed=0, pending=0) for r in results)
    with Session(engine) as session:
        workers = {d.claimed_by for d in session.exec(select(Delivery))}
    assert len(workers) == 3  # the work really was shared


def _address_of(relay: FaultyRelay, readers: list[str]) -> tuple[set[str], set[str]]:
    unknown = {a for a in readers if relay.faulty.unknown(a)}
    return unknown, set(readers) - unknown


@pytest.fixture
def faulty_relay() -> Iterator[FaultyRelay]:
    relay = FaultyRelay()
    relay.start()
    yield relay
    relay.stop()


def test_every_deliverable_reader_gets_the_column_once_through_a_misbehaving_relay(
    engine: Engine, database_url: str, tmp_path: Path, faulty_relay: FaultyRelay
) -> None:
    readers = processes.add_readers(engine, 2000)
    unknown, deliverable = _address_of(faulty_relay, readers)
    assert unknown and len(unknown) < 60
    env = processes.environment(
        database_url,
        tmp_path / "var",
        faulty_relay.url,
        smtp_timeout=1,  # the stalled DATA answers after 3 s
        retry_initial_seconds=0.2,
        retry_max_seconds=2,
        delivery_rate=150,
    )
    send = processes.start("send", "--date", SEED_DAY.isoformat(), env=env, log=tmp_path / "log")
    assert eventually(lambda: len(faulty_relay.received) >= 600, timeout=60)
    faulty_relay.handler.data_reply = "421 4.3.0 Shutting down"  # nothing half-taken
    time.sleep(0.2)
    faulty_relay.stop()  # the relay is gone for 30 s mid-send
    time.sleep(30)
    faulty_relay.handler.data_reply = None
    faulty_relay.start()
    assert send.wait(timeout=240) == 0, (tmp_path / "log").read_text()[-2000:]

    got = faulty_relay.per_recipient()
    assert set(got) == deliverable
    assert set(got.values()) == {1}, "somebody got the column twice"
    subscribers, rows = processes.ledger_states(engine)
    assert {a for a, s in subscribers.items() if s == SubscriberStatus.bounced} == unknown
    assert {a for a, s in rows.items() if s == "failed"} == unknown
    assert {a for a, s in rows.items() if s == "sent"} == deliverable


def test_a_relay_that_refuses_everything_pauses_the_send_until_it_accepts_again(
    engine: Engine, database_url: str, tmp_path: Path, faulty_relay: FaultyRelay
) -> None:
    readers = processes.add_readers(engine, 1500)
    unknown, deliverable = _address_of(faulty_relay, readers)
    env = processes.environment(
        database_url,
        tmp_path / "var",
        faulty_relay.url,
        smtp_timeout=1,
        retry_initial_seconds=0.2,
        retry_max_seconds=2,
        delivery_rate=150,
    )
    command = ("send", "--date", SEED_DAY.isoformat())
    send = processes.start(*command, env=env, log=tmp_path / "log")
    assert eventually(lambda: len(faulty_relay.received) >= 300, timeout=60)
    faulty_relay.handler.rcpt_reply_all = "554 5.7.1 <relay>: Relay access denied"
    assert send.wait(timeout=60) == 1  # paused, not wedged
    assert "paused" in (tmp_path / "log").read_text()
    subscribers, _rows = processes.ledger_states(engine)
    bounced = {a for a, s in subscribers.items() if s == SubscriberStatus.bounced}
    assert bounced <= unknown  # only mailboxes that do not exist, never the relay's refusal
    status = processes.run("status", "--json", env=env)
    assert '"status": "paused"' in status.stdout and "Relay access denied" in status.stdout

    faulty_relay.handler.rcpt_reply_all = None
    assert processes.run(*command, env=env, timeout=240).returncode == 0
    got = faulty_relay.per_recipient()
    assert set(got) == deliverable and set(got.values()) == {1}
    subscribers, _rows = processes.ledger_states(engine)
    assert {a for a, s in subscribers.items() if s == SubscriberStatus.bounced} == unknown

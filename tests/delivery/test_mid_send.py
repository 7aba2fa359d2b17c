"""What changes while a send is going out: a reader who leaves, a slow rate, a send that a
dead process left unfinished, a worker that loses its leases."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from service.db import make_engine, transaction
from service.delivery import ledger, sends
from service.delivery.worker import LeaseLost, SendWorker
from service.mail.smtp import relay_target
from service.models import Bounce, Delivery, MailStatus, Subscriber, SubscriberStatus, Suppression
from service.web.app import create_app
from tests.conftest import Clock, make_settings
from tests.daily import add_readers, courier, run_job, start_seed_send
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer


def _leave(engine: Engine, address: str) -> None:
    with transaction(engine) as session:
        reader = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
        reader.status = SubscriberStatus.unsubscribed


def test_a_reader_who_leaves_after_the_snapshot_gets_nothing(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    [stays, leaves, later] = add_readers(engine, active=3)["active"]
    smtp_server.reply_to_rcpt(later, "451 4.7.1 Try again later")  # deferred to a retry
    send = start_seed_send(engine, settings)
    _leave(engine, leaves)  # between the snapshot and the hand-off
    assert relay_target(settings) is not None
    worker = SendWorker(courier(engine, settings))

    async def leave_during_the_backoff() -> sends.SendCounts:
        run = asyncio.create_task(worker.run(send.id or 0))
        await asyncio.to_thread(eventually, lambda: smtp_server.messages_to(stays), 4, 0.02)
        _leave(engine, later)  # left while their delivery waited for its retry
        return await run

    counts = asyncio.run(leave_during_the_backoff())

    assert [r.rcpt_tos[0] for r in smtp_server.received] == [stays]
    assert counts == sends.SendCounts(total=3, sent=1, failed=0, pending=0, skipped=2)
    with Session(engine) as session:
        rows = {d.email: d for d in session.exec(select(Delivery))}
    assert rows[leaves].status == rows[later].status == MailStatus.skipped
    assert "no longer subscribed" in (rows[leaves].last_error or "")


def test_a_rate_below_one_message_a_second_still_sends(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, delivery_rate=0.8
    )
    add_readers(engine, active=2)
    started = time.monotonic()
    run_job(engine, settings)
    assert len(smtp_server.received) == 2
    assert time.monotonic() - started >= 1.0  # the second message waited its turn


def test_serve_resumes_an_unfinished_send_without_a_restart(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    now = dt.datetime.now(dt.UTC)
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        resume_interval=0.5,
        send_time=(now + dt.timedelta(hours=12)).strftime("%H:%M"),  # nothing due today
        timezone="UTC",
    )
    add_readers(engine, active=3)
    paused = start_seed_send(engine, settings)
    with transaction(engine) as session:
        sends.pause(session, paused.id or 0, "554 5.7.1 Relay access denied")
    with TestClient(create_app(settings, engine, scheduler=True)):
        # Nothing within three heal intervals: the start-up catch-up and the heal job both
        # leave a paused send to the operator.
        assert not eventually(lambda: smtp_server.received, timeout=1.5)
        with transaction(engine) as session:
            sends.resume(session, paused.id or 0)  # now an unfinished send nobody runs
        received = smtp_server.wait_for(3, timeout=10)
    assert len(received) == 3


def _claim(engine: Engine, send_id: int, worker: str, at: dt.datetime) -> list[ledger.Claim]:
    with transaction(engine) as session:
        return ledger.claim_batch(
            session, send_id=send_id, worker=worker, now=at, limit=10, lease=dt.timedelta(seconds=1)
        )


def test_a_worker_that_lost_its_rows_cannot_overwrite_them(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer, clock: Clock
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    add_readers(engine, active=3)
    send = start_seed_send(engine, settings)
    with transaction(engine) as session:  # claimable now, whatever the clock
        session.execute(Delivery.__table__.update().values(next_attempt_at=dt.datetime(1999, 1, 1)))  # type: ignore[attr-defined]
    stale = _claim(engine, send.id or 0, "stale", clock.utcnow())
    clock.advance(10)  # the stale worker's leases ran out
    owner = _claim(engine, send.id or 0, "owner", clock.utcnow())  # and another took them over
    assert [c.id for c in owner] == [c.id for c in stale]
    first, second, third = (c.id for c in stale)
    now = clock.utcnow()
    late = ledger.Outcomes(
        sent=[(first, "relay.example:25")],
        retry=[(second, now, "451 later")],
        bounced=[
            ledger.Refused(
                third, stale[2].subscriber_id, stale[2].email, "h" * 64, "550 5.1.1 gone", "5.1.1"
            )
        ],
    )
    with transaction(engine) as session:
        ledger.record(session, late, worker="stale", now=now)
        ledger.release(session, worker="stale", ids=[first, second, third], now=now)
    all_sent = ledger.Outcomes(sent=[(i, "relay.example:25") for i in (first, second, third)])
    postgres = engine.dialect.name == "postgresql"
    if postgres:  # the one-statement form a group all sent through one relay takes there
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            ledger.record_sent(conn, all_sent, worker="stale", now=now)
    with Session(engine) as session:
        rows = list(session.exec(select(Delivery).order_by(Delivery.id)))
        readers = list(session.exec(select(Subscriber)))
    assert [(r.status, r.claimed_by) for r in rows] == [("sending", "owner")] * 3
    assert {r.status for r in readers} == {SubscriberStatus.active}
    with Session(engine) as session:  # nor did its refusal suppress or record anything
        assert list(session.exec(select(Suppression))) == []
        assert list(session.exec(select(Bounce))) == []

    if postgres:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            ledger.record_sent(conn, all_sent, worker="owner", now=now)
    else:
        with transaction(engine) as session:
            ledger.record(session, all_sent, worker="owner", now=now)
    with Session(engine) as session:
        assert {r.status for r in session.exec(select(Delivery))} == {"sent"}


def test_a_worker_that_cannot_renew_its_leases_stops_before_others_take_over(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    connections = 2
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        delivery_lease_seconds=1.5,  # renewed every 0.5 s
        delivery_batch_size=40,
        delivery_connections=connections,
    )
    readers = add_readers(engine, active=160)["active"]
    send = start_seed_send(engine, settings)
    # Slow enough that claimed rows wait longer than a lease: without the abort, the healthy
    # worker would take them over while the stale one still sends them.
    smtp_server.handler.data_delay = 0.1
    assert relay_target(settings) is not None
    failing = make_engine(database_url)

    @event.listens_for(failing, "before_cursor_execute")
    def renewal_fails(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE deliveries SET lease_until"):
            raise OperationalError(statement, parameters, Exception("injected: server gone"))

    stale = SendWorker(courier(failing, settings), name="stale")
    healthy = SendWorker(courier(engine, settings), name="healthy")

    async def both() -> tuple[BaseException | sends.SendCounts, ...]:
        first = asyncio.create_task(stale.run(send.id or 0))
        await asyncio.sleep(0.1)
        return tuple(await asyncio.gather(first, healthy.run(send.id or 0), return_exceptions=True))

    try:
        stale_result, healthy_result = asyncio.run(both())
    finally:
        failing.dispose()

    got = smtp_server.per_recipient()
    assert sorted(got) == sorted(readers)
    duplicates = sum(got.values()) - len(readers)
    assert duplicates <= connections, (
        f"{duplicates} duplicates; at most the {connections} in flight"
    )
    assert isinstance(stale_result, LeaseLost)
    assert healthy_result == sends.SendCounts(total=160, sent=160, failed=0, pending=0)


@pytest.mark.parametrize("rate", [0.5, 2.5])
def test_any_positive_rate_makes_a_limiter(rate: float, engine: Engine) -> None:
    from service.delivery.ratelimit import delivery_rate

    limiter = delivery_rate(engine, 1, rate)
    assert limiter is not None

    async def two() -> float:
        assert limiter is not None
        started = time.monotonic()
        await limiter.acquire()
        await limiter.acquire()
        return time.monotonic() - started

    assert asyncio.run(two()) >= 0  # acquiring never raises, whatever the rate

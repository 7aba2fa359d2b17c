"""A worker joins, within seconds, a send that another process started or an operator resumed
(instead of at its next heal), each reader still getting one copy; and when nothing changed,
its look is one indexed query."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import SEND_POLL_SECONDS, Settings
from service.db import transaction
from service.delivery import sends
from service.delivery.daily import Dispatcher
from service.models import Delivery, MailStatus, SendStatus
from tests.conftest import make_settings
from tests.daily import add_readers, dispatcher, start_seed_send
from tests.helpers import statements
from tests.smtp_server import SmtpTestServer

T = TypeVar("T")
# A look every SEND_POLL_SECONDS, then the time a small send takes on a busy machine.
PROMPTLY = SEND_POLL_SECONDS + 5.0


def start_elsewhere(engine: Engine, settings: Settings) -> int:
    """What another process does when it starts the seed column's send (its scheduler, or an
    operator's "send now"), delivering nothing here: the send's id."""
    return start_seed_send(engine, settings).id or 0


async def watching(worker: Dispatcher, scenario: Callable[[], T]) -> T:
    """Run `worker`'s watch while `scenario` runs in a thread (another process); stop it
    gracefully afterwards; what `scenario` returned."""
    watch = asyncio.create_task(worker.watch_sends())
    await asyncio.sleep(0.2)  # its first look: nothing is going out
    try:
        return await asyncio.to_thread(scenario)
    finally:
        worker.stop()
        await watch
        await worker.wait(None)


def ledger(engine: Engine) -> list[Delivery]:
    with Session(engine) as session:
        return list(session.exec(select(Delivery)))


def test_a_worker_joins_a_send_another_process_started_within_seconds(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    readers = 20
    # No heal runs here at all, and it would be an hour away: only the watch can find it.
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, resume_interval="PT1H"
    )
    add_readers(engine, active=readers)
    worker = dispatcher(engine, settings)

    def another_process_starts_the_send() -> float:
        start_elsewhere(engine, settings)
        started = time.monotonic()
        smtp_server.wait_for(readers, timeout=PROMPTLY + 5)
        return time.monotonic() - started

    took = asyncio.run(watching(worker, another_process_starts_the_send))
    assert took < PROMPTLY, f"the worker joined after {took:.1f} s"
    assert sorted(smtp_server.per_recipient().values()) == [1] * readers
    rows = ledger(engine)
    assert {(row.status, row.claimed_by) for row in rows} == {(MailStatus.sent, worker.name)}


def test_a_worker_joins_a_send_the_operator_resumed_within_seconds(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    readers = 10
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, resume_interval="PT1H"
    )
    add_readers(engine, active=readers)
    send_id = start_elsewhere(engine, settings)
    with transaction(engine) as session:
        sends.pause_by_operator(session, send_id)
    worker = dispatcher(engine, settings)

    def the_operator_resumes_it() -> float:
        time.sleep(2 * SEND_POLL_SECONDS)  # looks that find it paused send nothing
        assert smtp_server.received == []
        with transaction(engine) as session:
            sends.resume_by_operator(session, send_id)
        resumed = time.monotonic()
        smtp_server.wait_for(readers, timeout=PROMPTLY + 5)
        return time.monotonic() - resumed

    took = asyncio.run(watching(worker, the_operator_resumes_it))
    assert took < PROMPTLY, f"the worker took the resumed send up after {took:.1f} s"
    assert sorted(smtp_server.per_recipient().values()) == [1] * readers
    with transaction(engine) as session:
        assert sends.status_of(session, send_id) == SendStatus.done


def test_two_watching_workers_share_a_new_send_and_each_reader_gets_one_copy(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    readers = 60
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        resume_interval="PT1H",
        delivery_batch_size=5,  # both get rows to claim
        delivery_rate=20,  # seconds of sending: time for both to join
    )
    add_readers(engine, active=readers)
    first, second = dispatcher(engine, settings), dispatcher(engine, settings)

    def another_process_starts_the_send() -> None:
        start_elsewhere(engine, settings)
        smtp_server.wait_for(readers, timeout=PROMPTLY + 10)

    async def both() -> None:
        other = asyncio.create_task(second.watch_sends())
        try:
            await watching(first, another_process_starts_the_send)
        finally:
            second.stop()
            await other
            await second.wait(None)

    asyncio.run(both())
    assert sorted(smtp_server.per_recipient().values()) == [1] * readers
    claimed = {row.claimed_by for row in ledger(engine)}
    assert claimed == {first.name, second.name}, "both workers delivered part of the send"


def test_a_look_that_finds_nothing_new_is_one_indexed_query(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    add_readers(engine, active=3)
    send_id = start_elsewhere(engine, settings)
    worker = dispatcher(engine, settings)
    now = dt.datetime.now(dt.UTC)

    async def look_twice() -> tuple[list[int], list[int], list[str]]:
        first = await worker.notice(now)
        await worker.wait(None)  # it delivered the send it joined
        with statements(engine) as seen:
            again = await worker.notice(now)
        return first, again, seen

    first, again, seen = asyncio.run(look_twice())
    assert first == [send_id] and again == []
    assert len(smtp_server.received) == 3
    [(query, _parameters)] = seen
    assert "FROM sends" in query and "status" in query
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":  # a few rows: only a forbidden scan shows it
            conn.execute(text("SET enable_seqscan = off"))
            plan = conn.exec_driver_sql("EXPLAIN " + query, {"status_1": "sending"}).all()
        else:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query, ("sending",)).all()
    assert "ix_sends_status" in " ".join(str(row) for row in plan)

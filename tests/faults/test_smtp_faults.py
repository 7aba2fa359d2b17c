"""Faults during a send: throttling (4xx), refusals (5xx), dropped connections, several
workers on one send, and a real `broadside send` killed mid-send."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.context import build_context
from service.db import transaction
from service.delivery import sends
from service.delivery.worker import SendWorker
from service.models import Delivery, Subscriber, SubscriberStatus
from tests.conftest import ROOT, make_settings
from tests.delivery.test_daily_send import SEED_DAY, add_readers, run_job, start_seed_send
from tests.smtp_server import SmtpTestServer

pytestmark = pytest.mark.slow


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

    got = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
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
        reader = session.exec(select(Subscriber).where(Subscriber.email == stuck)).one()
    assert row.status == "failed" and "retry deadline" in (row.last_error or "")
    assert reader.status == SubscriberStatus.active  # 4xx is not a bounce


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
    assert settings.smtp is not None

    async def three_workers() -> list[sends.SendCounts]:
        return await asyncio.gather(
            *(
                SendWorker(engine, build_context(settings), settings.smtp).run(send.id or 0)
                for _ in range(3)
            )
        )

    results = asyncio.run(three_workers())
    got = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert sorted(got) == sorted(readers) and set(got.values()) == {1}
    assert all(r == sends.SendCounts(total=300, sent=300, failed=0, pending=0) for r in results)
    with Session(engine) as session:
        workers = {d.claimed_by for d in session.exec(select(Delivery))}
    assert len(workers) == 3  # the work really was shared


def _subprocess_env(
    database_url: str, tmp_path: Path, smtp_url: str, connections: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADSIDE_")}
    env.update(
        BROADSIDE_DATABASE_URL=database_url,
        BROADSIDE_SMTP_URL=smtp_url,
        BROADSIDE_SECRET_KEY="crash-test-secret-key-long-enough",
        BROADSIDE_VAR_DIR=str(tmp_path / "var"),
        BROADSIDE_COLUMNS_DIR=str(ROOT / "seeds"),
        BROADSIDE_BASE_URL="https://news.example.com",
        BROADSIDE_FROM_ADDRESS="worldview@news.example.com",
        BROADSIDE_DELIVERY_CONNECTIONS=str(connections),
        BROADSIDE_DELIVERY_RATE="500",
        BROADSIDE_DELIVERY_LEASE_SECONDS="2",
        BROADSIDE_LOG_LEVEL="WARNING",
    )
    return env


def test_killed_send_resumes_without_losing_anyone(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    readers, connections = 2000, 4
    with transaction(engine) as session:
        session.execute(
            insert(Subscriber),
            [
                {"email": f"reader{i:05d}@example.com", "name": "", "status": "active"}
                for i in range(readers)
            ],
        )
    env = _subprocess_env(database_url, tmp_path, smtp_server.url, connections)
    command = [sys.executable, "-m", "service.cli", "send", "--date", SEED_DAY.isoformat()]

    first = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    smtp_server.wait_for(600, timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    at_kill = len(smtp_server.received)
    assert 0 < at_kill < readers, "the kill must land mid-send"

    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()[-2000:]

    got = collections.Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(got) == readers, "somebody was missed"
    duplicates = sum(got.values()) - readers
    assert duplicates <= connections, (
        f"{duplicates} duplicates; at most the {connections} in flight"
    )
    with transaction(engine) as session:
        send = sends.latest(session, 1)[0]
    assert send[0].status == "done"
    assert send[2] == sends.SendCounts(total=readers, sent=readers, failed=0, pending=0)
    time.sleep(0)  # keep the server log readable in the failure report above

"""The operator's controls under load: a send paused, resumed and cancelled while two
`broadside worker` processes deliver it from one PostgreSQL. listmonk re-sent a paused and
resumed campaign to readers who already had it (#2313); here every reader gets at most one
copy, nothing goes out while paused, and nothing more after a cancel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.db import transaction
from service.delivery import sends
from service.models import Delivery, Send, SendStatus, Subscriber, SubscriberStatus
from tests import processes
from tests.conftest import make_settings
from tests.daily import start_seed_send
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer

READERS = 3000


def settled(smtp: SmtpTestServer, quiet: float = 2.0, timeout: float = 30.0) -> int:
    """The number of mails received once none has arrived for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    count, since = len(smtp.received), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(smtp.received)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
    raise AssertionError(f"mail kept arriving for {timeout} s ({count} so far)")


ACTIONS = {"pause": sends.pause_by_operator, "resume": sends.resume_by_operator}


def operator(engine: Engine, action: str, send_id: int) -> None:
    """What the API, the dashboard and `broadside sends` do."""
    with transaction(engine) as session:
        ACTIONS.get(action, sends.cancel)(session, send_id)


def test_pause_resume_and_cancel_with_two_workers_send_nobody_a_second_copy(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("two worker processes share one PostgreSQL")
    readers = processes.add_readers(engine, READERS)
    # 150 messages a second per worker: the send takes ~10 s, long enough to steer.
    steering = {"delivery_rate": 150, "resume_interval": 1, "delivery_batch_size": 20}
    env = processes.environment(database_url, tmp_path / "var", smtp_server.url, **steering)
    workers = [processes.start("worker", env=env, log=tmp_path / f"worker-{n}.log") for n in (1, 2)]
    try:
        settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
        send_id = start_seed_send(engine, settings).id or 0
        assert eventually(lambda: len(smtp_server.received) >= READERS // 5, timeout=60)

        operator(engine, "pause", send_id)
        paused_at = settled(smtp_server)
        time.sleep(3)  # three heals of each worker: a paused send stays paused
        assert len(smtp_server.received) == paused_at < READERS

        operator(engine, "resume", send_id)
        assert eventually(lambda: len(smtp_server.received) >= paused_at + 300, timeout=30)

        operator(engine, "cancel", send_id)
        cancelled_at = settled(smtp_server)
        time.sleep(3)
        assert len(smtp_server.received) == cancelled_at < READERS
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=20)

    got = smtp_server.per_recipient()
    assert set(got.values()) == {1}, "a reader got the column twice"
    assert set(got) <= set(readers)
    with Session(engine) as session:
        send = session.exec(select(Send)).one()
        rows = list(session.exec(select(Delivery)))
        statuses = {s.status for s in session.exec(select(Subscriber))}
    assert send.status == SendStatus.cancelled
    assert {r.email for r in rows if r.status == "sent"} == set(got)  # each hand-off recorded
    assert sum(r.status == "pending" for r in rows) == READERS - len(got)  # left untouched
    assert statuses == {SubscriberStatus.active}  # no reader changed

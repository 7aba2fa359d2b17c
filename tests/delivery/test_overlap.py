"""Design rule 2 while messages overlap their commits: a connection sends the next message
while the last one's outcome is being committed, but ends it (the "." that makes the relay
accept it) only once that outcome is durable, so at most one accepted message per
connection is ever unrecorded; and a commit that fails leaves the next message unsent."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import select
from sqlalchemy.engine import Engine

from service.config import Settings
from service.delivery import worker
from service.delivery.worker import GroupCommit, SendWorker
from service.models import Delivery, MailStatus, Subscriber
from tests.daily import add_readers, courier, start_seed_send
from tests.smtp_server import SmtpTestServer

COMMIT_SECONDS = 0.03  # each commit slowed to this: longer than a hand-off to the test server


@pytest.fixture
def slow_commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every group commit takes COMMIT_SECONDS (a loaded database server), so that a message
    sent while one runs would be over before it, unless it waits; the fifth write fails when
    the returned list says so ([5])."""
    write = GroupCommit._write_now
    fail_at: list[int] = []
    writes = 0

    def slowly(self: GroupCommit, batch: object) -> None:
        nonlocal writes
        writes += 1
        time.sleep(COMMIT_SECONDS)
        if writes in fail_at:
            raise _Broken("the database went away")
        write(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.GroupCommit, "_write_now", slowly)
    return fail_at


class _Broken(Exception):
    """The database went away under a commit."""


def _status_of(engine: Engine, address: str) -> str:
    with engine.connect() as conn:
        status = conn.execute(
            select(Delivery.status)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)  # type: ignore[arg-type]
            .where(Subscriber.email == address)
        ).scalar_one()
    return str(status)


def test_a_message_is_ended_only_once_the_one_before_it_on_its_connection_is_recorded(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, slow_commits: list[int]
) -> None:
    readers = add_readers(engine, active=120)["active"]
    three = settings.model_copy(update={"delivery_connections": 3})
    send = start_seed_send(engine, three)
    last_on: dict[int, str] = {}  # connection -> the recipient of its last accepted message
    unrecorded: list[str] = []
    lock = threading.Lock()

    def check(session: Session, envelope: Envelope) -> None:
        with lock:
            before = last_on.get(id(session))
            last_on[id(session)] = envelope.rcpt_tos[0]
        if before is not None and _status_of(engine, before) != MailStatus.sent:
            unrecorded.append(before)

    smtp_server.handler.on_end = check
    counts = asyncio.run(SendWorker(courier(engine, three)).run(send.id or 0))
    assert counts.sent == len(readers)
    assert len(last_on) >= 2, "the messages overlapped on more than one connection"
    assert unrecorded == [], f"accepted while the message before was unrecorded: {unrecorded}"
    assert set(smtp_server.per_recipient().values()) == {1}


def test_a_commit_that_fails_leaves_the_message_waiting_on_it_unsent(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, slow_commits: list[int]
) -> None:
    add_readers(engine, active=60)
    one = settings.model_copy(update={"delivery_connections": 1})
    send = start_seed_send(engine, one)
    slow_commits.append(5)
    with pytest.raises(_Broken):
        asyncio.run(SendWorker(courier(engine, one)).run(send.id or 0))
    # With one connection, what was accepted is what was recorded, or one message more: the
    # one whose commit failed. The message sent while that commit ran was never ended.
    accepted = {r.rcpt_tos[0] for r in smtp_server.received}
    with engine.connect() as conn:
        recorded = set(
            conn.execute(
                select(Subscriber.email)
                .join(Delivery, Subscriber.id == Delivery.subscriber_id)  # type: ignore[arg-type]
                .where(Delivery.status == MailStatus.sent)
            ).scalars()
        )
    assert recorded <= accepted
    assert len(accepted - recorded) <= 1

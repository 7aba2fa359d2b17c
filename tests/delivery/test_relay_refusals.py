"""Design rule 3: only a refusal about the reader's mailbox bounces a reader. A relay that
refuses us (relay access denied, bad credentials, a paused account, a content filter)
pauses the send with the reason, changes no reader, and resumes when the operator says so."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.config import Settings
from service.delivery import sends
from service.delivery.worker import SendWorker
from service.mail.smtp import Fault, relay_target, sort_reply
from service.models import Send, SubscriberStatus
from tests import processes
from tests.conftest import make_settings
from tests.daily import SEED_DAY, add_readers, courier, run_job, start_seed_send
from tests.smtp_server import SmtpTestServer

RELAY_DENIED = "554 5.7.1 <reader@example.com>: Relay access denied"


@pytest.mark.parametrize(
    ("stage", "reply", "fault"),
    [
        (
            "RCPT",
            "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown",
            "recipient",
        ),
        ("RCPT", "552 5.2.2 Mailbox full", "recipient"),
        ("RCPT", "550 5.2.1 Mailbox disabled", "recipient"),
        ("RCPT", "550 User unknown", "recipient"),  # no enhanced code: 550 at RCPT is the mailbox
        ("RCPT", "553 Mailbox name not allowed", "recipient"),
        ("RCPT", RELAY_DENIED, "relay"),
        (
            "RCPT",
            "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname",
            "relay",
        ),
        ("RCPT", "554 5.7.0 Account paused", "relay"),
        ("RCPT", "550 5.7.1 Client host rejected: cannot find your hostname", "relay"),
        ("RCPT", "550 5.1.8 <b@example.org>: Sender address rejected: Domain not found", "relay"),
        ("RCPT", "554 Transaction failed", "relay"),  # no enhanced code, not a mailbox code
        ("RCPT", "552 Too many recipients", "relay"),
        ("DATA", "554 5.6.0 Message content rejected", "relay"),
        ("DATA", "550 Rejected by content filter", "relay"),  # 550 is the mailbox only at RCPT
        ("DATA", "552 5.2.2 Mailbox full", "relay"),
        ("MAIL FROM", "553 5.1.7 Sender address invalid", "relay"),
        ("AUTH", "535 5.7.8 Authentication credentials invalid", "relay"),
        ("RCPT", "451 4.7.1 Greylisted", "transient"),
        ("RCPT", "450 4.2.1 Mailbox busy", "transient"),
        ("DATA", "421 4.3.2 Shutting down", "transient"),
    ],
)
def test_replies_are_sorted_by_whose_problem_they_are(stage: str, reply: str, fault: str) -> None:
    code, message = reply.split(" ", 1)
    assert sort_reply(stage, int(code), message) is Fault(fault)


def _run(engine: Engine, settings: Settings, send_id: int) -> sends.SendCounts:
    assert relay_target(settings) is not None
    return asyncio.run(SendWorker(courier(engine, settings)).run(send_id))


def test_relay_refusing_everything_pauses_the_send_and_changes_no_reader(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, relay_failure_threshold=5
    )
    readers = add_readers(engine, active=30)["active"]
    send = start_seed_send(engine, settings)
    smtp_server.handler.rcpt_reply_all = RELAY_DENIED

    with pytest.raises(sends.SendPaused) as paused:
        _run(engine, settings, send.id or 0)

    assert "Relay access denied" in paused.value.reason
    subscribers, rows = processes.ledger_states(engine)
    assert set(subscribers.values()) == {SubscriberStatus.active}
    assert set(rows.values()) == {"pending"}
    with Session(engine) as session:
        stored = session.get(Send, send.id)
        assert stored is not None and stored.status == "paused"
        assert "Relay access denied" in (stored.pause_reason or "")
    assert smtp_server.received == []

    # The scheduler's heal leaves a paused send alone: it waits for the operator.
    with pytest.raises(sends.SendPaused):
        _run(engine, settings, send.id or 0)

    smtp_server.handler.rcpt_reply_all = None  # the operator fixed the relay
    with Session(engine) as session:
        assert sends.resume(session, send.id or 0)
        session.commit()
    counts = _run(engine, settings, send.id or 0)
    got = smtp_server.per_recipient()
    assert sorted(got) == sorted(readers) and set(got.values()) == {1}
    assert counts == sends.SendCounts(total=30, sent=30, failed=0, pending=0)


def test_content_filter_refusing_at_data_is_not_the_readers_fault(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, relay_failure_threshold=3
    )
    add_readers(engine, active=12)
    send = start_seed_send(engine, settings)
    smtp_server.handler.data_reply = "554 5.6.0 Message content rejected"
    with pytest.raises(sends.SendPaused, match=r"5\.6\.0"):
        _run(engine, settings, send.id or 0)
    subscribers, rows = processes.ledger_states(engine)
    assert set(subscribers.values()) == {SubscriberStatus.active}
    assert "failed" not in rows.values()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_bad_credentials_pause_the_send(engine: Engine, database_url: str, tmp_path: Path) -> None:
    relay = SmtpTestServer(credentials=("broadside", "right-password"))
    relay.start()
    try:
        settings = make_settings(
            database_url,
            tmp_path / "var",
            smtp_url=f"smtp://broadside:wrong-password@127.0.0.1:{relay.port}",
            relay_failure_threshold=4,
        )
        add_readers(engine, active=10)
        send = start_seed_send(engine, settings)
        with pytest.raises(sends.SendPaused, match="AUTH 535"):
            _run(engine, settings, send.id or 0)
        subscribers, _rows = processes.ledger_states(engine)
        assert set(subscribers.values()) == {SubscriberStatus.active}

        fixed = make_settings(
            database_url,
            tmp_path / "var",
            smtp_url=f"smtp://broadside:right-password@127.0.0.1:{relay.port}",
        )
        with Session(engine) as session:
            sends.resume(session, send.id or 0)
            session.commit()
        assert _run(engine, fixed, send.id or 0).sent == 10
        assert len(relay.received) == 10
    finally:
        relay.stop()


def test_mailbox_refusals_bounce_only_their_readers_and_a_lone_relay_refusal_waits(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, retry_deadline=3
    )
    readers = add_readers(engine, active=20)["active"]
    unknown, full, bare, policy = readers[:4]
    smtp_server.reply_to_rcpt(unknown, "550 5.1.1 User unknown")
    smtp_server.reply_to_rcpt(full, "552 5.2.2 Mailbox full")
    smtp_server.reply_to_rcpt(bare, "550 No such user here")
    smtp_server.reply_to_rcpt(policy, "554 5.7.1 Recipient rejected by policy")

    run_job(engine, settings)

    subscribers, rows = processes.ledger_states(engine)
    for address in (unknown, full, bare):
        assert subscribers[address] == SubscriberStatus.bounced
        assert rows[address] == "failed"
    # A refusal about policy is the relay's: retried until the deadline, never a bounce.
    assert subscribers[policy] == SubscriberStatus.active
    assert rows[policy] == "failed"
    delivered = {r.rcpt_tos[0] for r in smtp_server.received}
    assert delivered == set(readers[4:])


def test_broadside_send_stops_with_one_line_and_resumes_once_the_relay_accepts(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    readers = add_readers(engine, active=15)["active"]
    env = processes.environment(
        database_url,
        tmp_path / "var",
        smtp_server.url,
        retry_initial_seconds=0.2,
        log_level="CRITICAL",  # the one error line is the whole of stderr
    )

    def broadside(*args: str) -> subprocess.CompletedProcess[str]:
        return processes.run(*args, env=env, timeout=60)

    smtp_server.handler.rcpt_reply_all = RELAY_DENIED
    first = broadside("send", "--date", SEED_DAY.isoformat())
    assert first.returncode == 1
    assert "Traceback" not in first.stderr
    [line] = [line for line in first.stderr.splitlines() if line.strip()]
    assert line.startswith("error: send ") and "paused" in line
    assert "554" in line and "Relay access denied" in line
    assert f"broadside send --date {SEED_DAY.isoformat()}" in line

    status = broadside("status")
    assert status.returncode == 0
    assert "paused" in status.stdout and "Relay access denied" in status.stdout
    subscribers, rows = processes.ledger_states(engine)
    assert set(subscribers.values()) == {SubscriberStatus.active}
    assert set(rows.values()) == {"pending"}

    smtp_server.handler.rcpt_reply_all = None
    second = broadside("send", "--date", SEED_DAY.isoformat())
    assert second.returncode == 0, second.stderr
    assert "un-pausing send" in second.stdout
    got = smtp_server.per_recipient()
    assert sorted(got) == sorted(readers) and set(got.values()) == {1}
    assert "done" in broadside("status").stdout

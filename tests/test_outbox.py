"""The transactional outbox: leases renewed during a slow hand-over so that a slow relay never
lets a second process send the same mail, a relay that refuses us only delays mail, never
drops it, a burst of mail goes out at once rather than a claim per poll, and a recipient
suppressed after the mail was queued gets nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.engine import Engine

from service import subscriptions
from service.config import Settings
from service.context import build_context
from service.db import transaction
from service.mail import outbox
from service.mail.smtp import relay_target
from service.models import MailStatus, SuppressionReason
from tests.conftest import Clock, make_settings
from tests.helpers import outbox_rows
from tests.smtp_server import SmtpTestServer


def queue_mails(engine: Engine, settings: Settings, count: int, kind: str = "confirm") -> list[str]:
    addresses = [f"reader{i}@example.com" for i in range(count)]
    ctx = build_context(settings)
    with transaction(engine) as session:
        for address in addresses:
            outbox.queue(
                session,
                ctx,
                kind=kind,
                to=address,
                template="confirm",
                email=address,
                confirm_url="https://news.example.com/confirm/x",
                valid_days=7,
            )
    return addresses


def test_a_slow_relay_never_lets_two_processes_send_one_mail(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        smtp_timeout=1.0,
        outbox_lease_seconds=4.0,
    )
    addresses = queue_mails(engine, settings, 10)
    # 10 mails take longer than one lease; each reply still comes well within SMTP_TIMEOUT
    # on a loaded machine (0.4 against 0.5 s timed out now and then under CI's load).
    smtp_server.handler.data_delay = 0.6
    assert relay_target(settings) is not None
    first = outbox.OutboxSender(engine, settings, relay_target(settings))
    second = outbox.OutboxSender(engine, settings, relay_target(settings))

    async def two_processes() -> None:
        rounds = asyncio.create_task(first.deliver_due())
        while not rounds.done():  # the second process looks every 0.1 s while the first works
            await asyncio.sleep(0.1)
            await second.deliver_due()
        await rounds

    asyncio.run(two_processes())
    got = smtp_server.per_recipient()
    assert sorted(got) == sorted(addresses)
    assert set(got.values()) == {1}, got
    rows = outbox_rows(engine)
    assert {row.status for row in rows} == {MailStatus.sent}
    assert {row.claimed_by for row in rows} == {None}


def test_a_relay_refusing_us_delays_transactional_mail_and_never_drops_it(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer, clock: Clock
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    [address] = queue_mails(engine, settings, 1)
    assert relay_target(settings) is not None
    sender = outbox.OutboxSender(engine, settings, relay_target(settings))
    smtp_server.handler.rcpt_reply_all = "554 5.7.1 Relay access denied"
    asyncio.run(sender.deliver_due())
    [row] = outbox_rows(engine)
    assert row.status == MailStatus.pending and "Relay access denied" in (row.last_error or "")

    smtp_server.handler.rcpt_reply_all = None
    clock.advance(60)  # past the backoff
    asyncio.run(sender.deliver_due(now=clock.utcnow()))
    assert [r.rcpt_tos[0] for r in smtp_server.received] == [address]


def test_a_mailbox_that_does_not_exist_is_final(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    [address] = queue_mails(engine, settings, 1)
    smtp_server.reply_to_rcpt(address, "550 5.1.1 No such user")
    assert relay_target(settings) is not None
    asyncio.run(outbox.OutboxSender(engine, settings, relay_target(settings)).deliver_due())
    [row] = outbox_rows(engine)
    assert row.status == MailStatus.failed and "5.1.1" in (row.last_error or "")


def test_a_burst_of_mail_goes_out_without_waiting_a_poll_per_claim(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    # A sign-up burst: three claims' worth, and a poll interval far longer than the test. The
    # sender once took one claim per wake-up and waited for the next poll: 50 mails every 2 s.
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, outbox_poll_seconds=600.0
    )
    addresses = queue_mails(engine, settings, 2 * outbox.CLAIM_LIMIT + 7)
    assert relay_target(settings) is not None
    sender = outbox.OutboxSender(engine, settings, relay_target(settings))

    async def woken_once() -> None:
        running = asyncio.create_task(sender.run())
        sender.notify()
        try:
            while len(smtp_server.received) < len(addresses):
                await asyncio.sleep(0.05)
                assert not running.done()
        finally:
            sender.stop()
            await asyncio.wait_for(running, 30)

    asyncio.run(asyncio.wait_for(woken_once(), 60))
    assert sorted(smtp_server.per_recipient()) == sorted(addresses)
    assert set(smtp_server.per_recipient().values()) == {1}
    rows = outbox_rows(engine)
    assert {row.status for row in rows} == {MailStatus.sent}
    assert all(row.sent_at is not None and row.claimed_by is None for row in rows)


def test_a_recipient_suppressed_after_queueing_gets_no_mail_but_a_confirmation_still_goes(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    [left, stays] = queue_mails(engine, settings, 2, kind="notice")
    queue_mails(engine, settings, 1, kind="confirm")  # to reader0@example.com again
    ctx = build_context(settings)
    with transaction(engine) as session:  # reader0 unsubscribed after the mails were queued
        subscriptions.suppress(session, ctx, left.upper(), SuppressionReason.unsubscribed)
    assert relay_target(settings) is not None
    asyncio.run(outbox.OutboxSender(engine, settings, relay_target(settings)).deliver_due())

    # `left` gets its confirmation only, `stays` its notice.
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted([left, stays])
    by_kind = {(row.kind, row.recipient): row for row in outbox_rows(engine)}
    assert by_kind[("notice", left)].status == MailStatus.skipped
    assert by_kind[("notice", left)].last_error == outbox.SUPPRESSED
    assert by_kind[("notice", stays)].status == MailStatus.sent
    assert by_kind[("confirm", left)].status == MailStatus.sent

"""The transactional outbox: leases renewed per mail so that a slow relay never lets a second
process send the same mail, and a relay that refuses us only delays mail, never drops it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.engine import Engine

from service.config import Settings
from service.context import build_context
from service.db import transaction
from service.mail import outbox
from service.mail.smtp import relay_target
from service.models import MailStatus
from tests.conftest import Clock, make_settings
from tests.helpers import outbox_rows
from tests.smtp_server import SmtpTestServer


def queue_mails(engine: Engine, settings: Settings, count: int) -> list[str]:
    addresses = [f"reader{i}@example.com" for i in range(count)]
    ctx = build_context(settings)
    with transaction(engine) as session:
        for address in addresses:
            outbox.queue(
                session,
                ctx,
                kind="confirm",
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

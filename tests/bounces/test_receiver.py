"""The bounce receiver end to end: a column goes out with a VERP return path and a mailto:
unsubscribe address, and what comes back by SMTP (a DSN, an ARF complaint, a mail to the
unsubscribe address, an out-of-office, junk) changes the right reader, or nobody."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select

from service.bounces.receiver import BounceReceiver, process, route
from service.bounces.record import Whom, record_bounce
from service.bounces.report import Finding
from service.config import Settings
from service.context import AppContext, Requester, build_context
from service.db import transaction
from service.mail import outbox
from service.mail.outbox import OutboxSender
from service.mail.smtp import relay_target
from service.models import (
    Bounce,
    BounceKind,
    Consent,
    Delivery,
    Send,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
)
from service.subscriptions import confirm, subscribe, suppress, suppression_of
from service.tokens import Purpose
from tests import processes
from tests.conftest import make_settings
from tests.daily import add_readers, run_job, start_seed_send
from tests.helpers import eventually, free_port, reader
from tests.smtp_server import Received, SmtpTestServer

BOUNCE_DOMAIN = "bounces.news.example.com"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, smtp_server: SmtpTestServer) -> Settings:
    return make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, bounce_domain=BOUNCE_DOMAIN
    )


@pytest.fixture
def ctx(settings: Settings) -> AppContext:
    return build_context(settings)


@pytest.fixture
def receiver(engine: Engine, ctx: AppContext) -> Iterator[int]:
    running = BounceReceiver(engine, ctx, port=0)
    running.start()
    yield running.port
    running.stop()


def column_to(
    engine: Engine, settings: Settings, smtp: SmtpTestServer, **readers: int
) -> dict[str, Received]:
    """Send the seed column to `readers`; each active reader's delivered mail by address."""
    made = add_readers(engine, **readers)
    run_job(engine, settings)
    mails = smtp.wait_for(len(made.get("active", [])))
    return {m.rcpt_tos[0]: m for m in mails}


def deliver(port: int, recipient: str, data: bytes, sender: str = "") -> tuple[int, str]:
    """Hand `data` to the receiver as an MTA would (null sender for reports); its reply."""

    async def send() -> tuple[int, str]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await smtp.connect()
        try:
            await smtp.mail(sender)
            await smtp.rcpt(recipient)
            reply = await smtp.data(data)
            return reply.code, reply.message
        finally:
            await smtp.quit()

    return asyncio.run(send())


def dsn(
    recipient: str, status: str, action: str = "failed", original_headers: bytes = b""
) -> bytes:
    """A delivery status notification as Postfix writes it (RFC 3464)."""
    text = (
        "From: MAILER-DAEMON@mx.example.org\r\n"
        "To: whoever\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n'
        "\r\n--B1\r\nContent-Type: text/plain\r\n\r\nI could not deliver your message.\r\n"
        "\r\n--B1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} <{recipient}>: mailbox says no\r\n"
        "\r\n--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ).encode()
    return text + original_headers + b"\r\n--B1--\r\n"


def arf(original: bytes, rcpt: str = "") -> bytes:
    """A feedback-loop complaint (RFC 5965) quoting our original message, recipient redacted
    as most mailbox providers do."""
    head = (
        "From: fbl@provider.example\r\n"
        "To: fbl-reports\r\n"
        "Subject: Abuse report\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="A1"\r\n'
        "\r\n--A1\r\nContent-Type: text/plain\r\n\r\nThis is an e-mail abuse report.\r\n"
        "\r\n--A1\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: Provider-FBL/2.0\r\nVersion: 1\r\n"
        + (f"Original-Rcpt-To: <{rcpt}>\r\n" if rcpt else "")
        + "\r\n--A1\r\nContent-Type: message/rfc822\r\n\r\n"
    ).encode()
    return head + original + b"\r\n--A1--\r\n"


def headers_of(mail: Received) -> bytes:
    return mail.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def bounces(engine: Engine) -> list[Bounce]:
    with Session(engine) as session:
        return list(session.exec(select(Bounce).order_by(col(Bounce.id))))


def unsubscribe_mailto(mail: Received) -> str:
    found = re.search(r"<mailto:([^?>]+)\?subject=unsubscribe>", mail.message["List-Unsubscribe"])
    assert found is not None, mail.message["List-Unsubscribe"]
    return found.group(1)


def test_column_goes_out_with_a_verp_return_path_that_fits_and_names_its_delivery(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer
) -> None:
    mails = column_to(engine, settings, smtp_server, active=2)
    for address, mail in mails.items():
        local, _, domain = mail.mail_from.rpartition("@")
        assert domain == BOUNCE_DOMAIN and local.startswith("bounces+")
        assert len(local) <= 64
        where = route(settings, mail.mail_from)
        assert where is not None and where.kind == "bounce" and where.token
        with Session(engine) as session:
            delivery = session.exec(select(Delivery).where(Delivery.email == address)).one()
        tokens = build_context(settings).tokens
        assert tokens.read_address(Purpose.bounce, where.token) == delivery.id
        mailto = unsubscribe_mailto(mail)
        assert mailto.startswith("unsubscribe+") and mailto.endswith(f"@{BOUNCE_DOMAIN}")


def test_dsn_at_the_verp_address_suppresses_the_reader_it_names(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=2)
    gone, kept = sorted(mails)
    # The DSN names a forwarded address, not ours: the VERP token still finds the delivery.
    report = dsn("forwarded-target@elsewhere.example", "5.1.1")
    assert deliver(receiver, mails[gone].mail_from, report)[0] == 250

    assert reader(engine, gone).status == SubscriberStatus.bounced
    assert reader(engine, kept).status == SubscriberStatus.active
    [bounce] = bounces(engine)
    assert (bounce.kind, bounce.status, bounce.source) == (BounceKind.hard, "5.1.1", "smtp")
    assert bounce.email == gone and bounce.delivery_id is not None
    assert "mailbox says no" in (bounce.diagnostic or "")
    assert bounce.raw_size == len(report) and bounce.raw is None  # attributed: not kept raw
    with Session(engine) as session:
        assert suppression_of(session, ctx, gone) == SuppressionReason.bounced
        assert suppression_of(session, ctx, kept) is None


def test_next_send_skips_everyone_suppressed(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=3)
    gone, complained, stays = sorted(mails)
    deliver(receiver, mails[gone].mail_from, dsn(gone, "5.1.1"))
    deliver(receiver, f"bounces@{BOUNCE_DOMAIN}", arf(headers_of(mails[complained])))
    smtp_server.clear()
    with transaction(engine) as session:  # the same column again, as if it were tomorrow's
        session.execute(delete(Delivery))
        session.execute(delete(Send))
    send = start_seed_send(engine, settings)
    assert send.total == 1
    run_job(engine, settings)
    assert [m.rcpt_tos[0] for m in smtp_server.wait_for(1)] == [stays]


def test_arf_complaint_with_a_redacted_recipient_unsubscribes_the_reader_at_once(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=2)
    complainer, other = sorted(mails)
    # Feedback loops go to the registered address and redact the recipient: our signed
    # links in the quoted message name the reader.
    assert (
        deliver(receiver, f"bounces@{BOUNCE_DOMAIN}", arf(headers_of(mails[complainer])))[0] == 250
    )

    assert reader(engine, complainer).status == SubscriberStatus.complained
    assert reader(engine, other).status == SubscriberStatus.active
    [bounce] = bounces(engine)
    assert bounce.kind == BounceKind.complaint and "abuse" in (bounce.diagnostic or "")
    with Session(engine) as session:
        assert suppression_of(session, ctx, complainer) == SuppressionReason.complained
        actions = [c.action for c in session.exec(select(Consent))]
    assert actions == ["complaint"]


def test_a_mail_to_the_list_unsubscribe_mailto_unsubscribes_without_confirmation(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=2)
    leaving, other = sorted(mails)
    to = unsubscribe_mailto(mails[leaving])
    note = f"From: {leaving}\r\nTo: {to}\r\nSubject: unsubscribe\r\n\r\n\r\n".encode()
    assert deliver(receiver, to, note, sender=leaving)[0] == 250

    assert reader(engine, leaving).status == SubscriberStatus.unsubscribed
    assert reader(engine, other).status == SubscriberStatus.active
    with Session(engine) as session:
        assert suppression_of(session, ctx, leaving) == SuppressionReason.unsubscribed
        consent = session.exec(select(Consent)).one()
    assert (consent.action, consent.source) == ("mail-unsubscribe", "smtp")


def test_a_forged_token_changes_nobody_and_the_mail_is_kept(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [address] = mails
    real = unsubscribe_mailto(mails[address])
    number, _, mac = real.split("@")[0].removeprefix("unsubscribe+").partition("-")
    forged = f"unsubscribe+{number}-{'a' * len(mac)}@{BOUNCE_DOMAIN}"
    note = b"Subject: unsubscribe\r\n\r\nplease\r\n"
    assert deliver(receiver, forged, note)[0] == 250

    assert reader(engine, address).status == SubscriberStatus.active
    [bounce] = bounces(engine)
    assert bounce.kind == BounceKind.unknown and bounce.raw == note


def test_soft_bounces_suppress_only_past_the_limit_within_the_window(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [address] = mails
    start = dt.datetime(2026, 11, 1, 12, 0)
    soft = Finding(BounceKind.soft, address, "4.2.2", "mailbox full")

    def soft_bounce(at: dt.datetime) -> None:
        with transaction(engine) as session:
            whom = Whom(session.exec(select(Subscriber)).one())
            record_bounce(session, ctx, soft, whom, source="smtp", now=at)

    soft_bounce(start)
    soft_bounce(start + dt.timedelta(days=1))
    assert reader(engine, address).status == SubscriberStatus.active
    soft_bounce(start + dt.timedelta(days=15, hours=12))  # the first has left the window
    assert reader(engine, address).status == SubscriberStatus.active
    soft_bounce(start + dt.timedelta(days=15, hours=13))  # three within 15 days
    assert reader(engine, address).status == SubscriberStatus.bounced
    assert "3 soft bounces within 15 days" in (reader(engine, address).bounce_reason or "")


def test_delayed_dsns_count_as_soft_bounces(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    for _ in range(2):
        deliver(receiver, mail.mail_from, dsn(address, "4.4.1", action="delayed"))
    assert reader(engine, address).status == SubscriberStatus.active
    deliver(receiver, mail.mail_from, dsn(address, "4.4.1", action="delayed"))
    assert reader(engine, address).status == SubscriberStatus.bounced
    assert [b.kind for b in bounces(engine)] == [BounceKind.soft] * 3


def test_an_out_of_office_reply_is_not_a_bounce(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    away = (
        f"From: {address}\r\nTo: {mail.mail_from}\r\nSubject: Automatic reply: World View\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
    ).encode()
    for _ in range(4):
        assert deliver(receiver, mail.mail_from, away)[0] == 250
    assert reader(engine, address).status == SubscriberStatus.active
    assert {b.kind for b in bounces(engine)} == {BounceKind.auto_reply}


def test_a_policy_refusal_in_a_dsn_changes_nobody(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    deliver(receiver, mail.mail_from, dsn(address, "5.7.1"))
    assert reader(engine, address).status == SubscriberStatus.active
    [bounce] = bounces(engine)
    assert bounce.kind == BounceKind.policy and bounce.status == "5.7.1"


def test_an_old_style_bounce_without_rfc_3464_is_read_by_the_heuristics(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [address] = mails
    qmail = (
        "From: MAILER-DAEMON@example.org\r\nTo: bounces\r\nSubject: failure notice\r\n\r\n"
        "Hi. This is the qmail-send program at example.org.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        f"<{address}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n"
    ).encode()
    # Sent to the plain bounce address: no token, attributed by the address it names.
    deliver(receiver, f"bounces@{BOUNCE_DOMAIN}", qmail)
    assert reader(engine, address).status == SubscriberStatus.bounced


def test_mail_that_names_no_reader_is_kept_whole_for_the_operator(
    engine: Engine, settings: Settings, receiver: int
) -> None:
    junk = b"From: someone@example.org\r\nSubject: hello\r\n\r\nBuy now!\r\n"
    assert deliver(receiver, f"bounces@{BOUNCE_DOMAIN}", junk)[0] == 250
    [bounce] = bounces(engine)
    assert bounce.kind == BounceKind.unknown and bounce.subscriber_id is None
    assert bounce.raw == junk and bounce.raw_size == len(junk)


def test_an_unreadable_report_at_a_verp_address_still_counts_against_its_delivery(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    garbled = b"Subject: ???\r\nContent-Type: multipart/report; boundary=\r\n\r\n\x00\xff\r\n"
    assert deliver(receiver, mail.mail_from, garbled)[0] == 250
    [bounce] = bounces(engine)
    assert bounce.kind == BounceKind.soft and bounce.email == address
    assert bounce.delivery_id is not None


@pytest.mark.parametrize(
    "recipient",
    ["someone@news.example.com", f"postmaster@{BOUNCE_DOMAIN}", "bounces@other.example"],
)
def test_the_receiver_takes_mail_only_for_our_bounce_addresses(
    engine: Engine, receiver: int, recipient: str
) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        deliver(receiver, recipient, b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.code == 550
    assert bounces(engine) == []


def test_without_a_bounce_domain_bounces_come_to_the_envelope_sender_and_no_mailto_is_offered(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    assert mail.mail_from == "bounces@news.example.com"  # ENVELOPE_FROM, no VERP
    assert "mailto:" not in mail.message["List-Unsubscribe"]
    assert route(settings, "bounces@news.example.com") is not None
    assert route(settings, "bounces+x@news.example.com") is None
    kept = process(
        engine,
        build_context(settings),
        dsn(address, "5.1.1"),
        [route(settings, "bounces@news.example.com")],
        source="smtp",
    )  # type: ignore[list-item]
    assert [b.kind for b in kept] == [BounceKind.hard]
    assert reader(engine, address).status == SubscriberStatus.bounced


def test_confirming_a_new_subscription_lifts_the_suppression(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    deliver(receiver, mail.mail_from, dsn(address, "5.1.1"))
    with transaction(engine) as session:
        subscribe(session, ctx, email=address, name="Back", who=Requester())
    subscriber = reader(engine, address)
    assert subscriber.status == SubscriberStatus.pending
    with Session(engine) as session:
        assert suppression_of(session, ctx, address) == SuppressionReason.bounced
    token = ctx.tokens.make(Purpose.confirm, f"{subscriber.id}-{subscriber.confirm_nonce}")
    with transaction(engine) as session:
        confirm(session, ctx, token=token, who=Requester())
    assert reader(engine, address).status == SubscriberStatus.active
    with Session(engine) as session:
        assert suppression_of(session, ctx, address) is None


def test_a_relay_refusing_the_mailbox_at_send_time_suppresses_and_one_refusing_us_does_not(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer
) -> None:
    readers = add_readers(engine, active=3)
    gone, refused_by_policy, fine = readers["active"]
    smtp_server.reply_to_rcpt(gone, "550 5.1.1 <gone>: Recipient address rejected: User unknown")
    smtp_server.reply_to_rcpt(refused_by_policy, "554 5.7.1 Message rejected as spam")
    # The send retries the policy refusal until RELAY_FAILURE_THRESHOLD refusals in a row
    # pause it, one look a second: three of them instead of the default ten.
    run_job(engine, settings.model_copy(update={"relay_failure_threshold": 3}))

    assert reader(engine, gone).status == SubscriberStatus.bounced
    assert reader(engine, refused_by_policy).status == SubscriberStatus.active
    assert reader(engine, fine).status == SubscriberStatus.active
    [bounce] = bounces(engine)
    assert (bounce.source, bounce.kind, bounce.status) == ("at-send", BounceKind.hard, "5.1.1")
    assert bounce.email == gone and bounce.delivery_id is not None
    with Session(engine) as session:
        assert suppression_of(session, ctx, gone) == SuppressionReason.bounced
        assert suppression_of(session, ctx, refused_by_policy) is None


def test_a_notice_queued_before_a_complaint_is_not_sent_after_it(
    engine: Engine, settings: Settings, ctx: AppContext, smtp_server: SmtpTestServer
) -> None:
    with transaction(engine) as session:
        outbox.queue(
            session,
            ctx,
            kind="already-subscribed",
            to="ann@example.org",
            template="already_subscribed",
            name="Ann",
            email="ann@example.org",
            unsubscribe_url=ctx.links.unsubscribe_url(1),
        )
        outbox.queue(
            session,
            ctx,
            kind="confirm",
            to="ann@example.org",
            template="confirm",
            email="ann@example.org",
            confirm_url=ctx.links.confirm_url("x"),
            valid_days=7,
        )
        suppress(session, ctx, "Ann@Example.org", SuppressionReason.complained)
    target = relay_target(settings)
    assert target is not None
    asyncio.run(OutboxSender(engine, settings, target).deliver_due())

    [mail] = smtp_server.received  # the confirmation the person asked for, not the notice
    assert mail.message["Subject"] and "onfirm" in str(mail.message["Subject"])
    assert parseaddr(str(mail.message["To"]))[1] == "ann@example.org"


# The commands that run the receiver


def answers_smtp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(4).startswith(b"220")
    except OSError:
        return False


def stopped(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20)


@pytest.mark.parametrize("command", ["bounces", "worker"])
def test_broadside_bounces_and_a_worker_with_a_port_receive_until_stopped(
    command: str, engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    port = free_port()
    env = processes.environment(
        database_url,
        tmp_path / "var",
        smtp_server.url,
        bounce_domain=BOUNCE_DOMAIN,
        bounce_smtp_port=port,
    )
    running = processes.start(command, env=env, log=tmp_path / "log")
    try:
        assert eventually(lambda: answers_smtp(port), timeout=30), (tmp_path / "log").read_text()
        junk = b"From: someone@example.org\r\nSubject: hello\r\n\r\nwho reads this?\r\n"
        assert deliver(port, f"bounces@{BOUNCE_DOMAIN}", junk)[0] == 250
    finally:
        code = stopped(running)
    assert code == 0, (tmp_path / "log").read_text()
    assert [b.raw for b in bounces(engine)] == [junk]


def test_broadside_bounces_on_a_taken_port_is_one_line(
    database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = processes.environment(
            database_url, tmp_path / "var", smtp_server.url, bounce_smtp_port=port
        )
        started = time.monotonic()
        result = processes.run("bounces", env=env, timeout=60)
        took = time.monotonic() - started
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot listen on 127.0.0.1:"), lines
    # Said at once: aiosmtpd alone would first wait out its 10 s ready_timeout.
    assert took < 9, took


def test_a_report_delivered_twice_counts_once(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    # An MTA that did not hear our 250 sends the same report again, Message-ID and all.
    delayed = b"Message-ID: <dsn.1@mx.example.org>\r\n" + dsn(address, "4.2.2", "delayed")
    for _ in range(3):
        assert deliver(receiver, mail.mail_from, delayed)[0] == 250
    assert reader(engine, address).status == SubscriberStatus.active
    assert len(bounces(engine)) == 1


def test_a_report_with_nul_bytes_in_its_fields_is_still_recorded(
    engine: Engine, settings: Settings, smtp_server: SmtpTestServer, receiver: int
) -> None:
    mails = column_to(engine, settings, smtp_server, active=1)
    [(address, mail)] = mails.items()
    report = dsn(address, "5.1.1").replace(b"mailbox says no", b"mailbox\x00says no")
    assert deliver(receiver, mail.mail_from, report)[0] == 250
    [bounce] = bounces(engine)
    assert bounce.kind == BounceKind.hard and "\x00" not in (bounce.diagnostic or "")

"""The IMAP poller against a real Dovecot over TLS: bounces that land in a mailbox are read,
recorded against the right reader, and removed; nothing is lost when they cannot be read."""

from __future__ import annotations

import imaplib
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.bounces.imap import poll_once
from service.config import ImapUrl, Settings
from service.context import AppContext, build_context
from service.models import Bounce, BounceKind, SubscriberStatus
from tests.bounces.imap_server import DovecotServer, usable
from tests.bounces.test_receiver import BOUNCE_DOMAIN, column_to, dsn
from tests.conftest import make_settings
from tests.helpers import reader
from tests.smtp_server import SmtpTestServer


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    if (why := usable()) is not None:
        pytest.skip(why)
    # Not under pytest's tmp_path: its folders are 0700, and Dovecot's own processes (the
    # dovecot and nobody users) must reach the configuration and the mailbox.
    folder = Path(tempfile.mkdtemp(prefix="broadside-dovecot-"))
    server = DovecotServer(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def trusted(dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the test server's certificate the way an operator trusts a private CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.certificate))


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, smtp_server: SmtpTestServer, dovecot: DovecotServer
) -> Settings:
    return make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        bounce_domain=BOUNCE_DOMAIN,
        bounce_imap_url=dovecot.url,
    )


@pytest.fixture
def ctx(settings: Settings) -> AppContext:
    return build_context(settings)


def bounces(engine: Engine) -> list[Bounce]:
    with Session(engine) as session:
        return list(session.exec(select(Bounce)))


def test_bounces_in_the_mailbox_are_recorded_and_removed(
    engine: Engine,
    settings: Settings,
    ctx: AppContext,
    smtp_server: SmtpTestServer,
    dovecot: DovecotServer,
    trusted: None,
) -> None:
    mails = column_to(engine, settings, smtp_server, active=2)
    gone, stays = sorted(mails)
    # The mailbox's delivery agent wrote the envelope recipient (the VERP address) down.
    report = f"Delivered-To: {mails[gone].mail_from}\r\n".encode() + dsn(
        "forwarded@elsewhere.example", "5.1.1"
    )
    dovecot.deliver(report)
    dovecot.deliver(b"From: someone@example.org\r\nSubject: hello\r\n\r\nnot a bounce\r\n")

    url = ImapUrl.parse(dovecot.url)
    assert poll_once(engine, ctx, url) == 2

    assert reader(engine, gone).status == SubscriberStatus.bounced
    assert reader(engine, stays).status == SubscriberStatus.active
    kinds = sorted((b.kind, b.source, b.delivery_id is not None) for b in bounces(engine))
    assert kinds == [(BounceKind.hard, "imap", True), (BounceKind.unknown, "imap", False)]
    assert dovecot.messages() == 0  # recorded, so removed
    assert poll_once(engine, ctx, url) == 0


def test_a_wrong_password_or_an_untrusted_certificate_is_an_error_and_keeps_the_mail(
    engine: Engine, ctx: AppContext, dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.deliver(b"Subject: bounce\r\n\r\nx\r\n")
    url = ImapUrl.parse(dovecot.url)
    with pytest.raises(ssl.SSLError):  # the server's certificate is not trusted yet
        poll_once(engine, ctx, url)
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.certificate))
    wrong = ImapUrl(url.host, url.port, url.username, "not-the-password", url.mailbox)
    with pytest.raises(imaplib.IMAP4.error):
        poll_once(engine, ctx, wrong)
    assert dovecot.messages() == 1 and bounces(engine) == []


def test_imap_url_must_be_tls_and_never_shows_its_password() -> None:
    with pytest.raises(ValueError, match="imaps://"):
        ImapUrl.parse("imap://u:p@host/INBOX")
    url = ImapUrl.parse("imaps://bounce%40example.com:p%3Ass@mail.example.com/Bounces")
    assert (url.username, url.password, url.port, url.mailbox) == (
        "bounce@example.com",
        "p:ss",
        993,
        "Bounces",
    )
    assert "p:ss" not in repr(url)

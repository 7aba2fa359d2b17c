"""The one door for transactional mail: outbox.queue() renders both templates with the site's
globals, builds the message and writes it in the caller's transaction, so a request that fails
leaves no mail behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import jinja2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.config import Settings
from service.context import build_context
from service.db import transaction
from service.mail import outbox
from service.mail.smtp import relay_target
from service.models import MailStatus
from tests.helpers import body, outbox_rows
from tests.smtp_server import SmtpTestServer

UNSUBSCRIBE = "https://news.example.com/unsubscribe/t0ken"


def deliver_due(engine: Engine, settings: Settings) -> int:
    """One round of the outbox sender, as the running service would do it."""
    assert relay_target(settings) is not None
    return asyncio.run(outbox.OutboxSender(engine, settings, relay_target(settings)).deliver_due())


def queue_notice(session: Session, settings: Settings) -> None:
    outbox.queue(
        session,
        build_context(settings),
        kind="already-subscribed",
        to="ada@example.com",
        to_name="Ada Lovelace",
        reply_to="editor@news.example.com",
        template="already_subscribed",
        name="Ada",
        email="ada@example.com",
        unsubscribe_url=UNSUBSCRIBE,
    )


def test_queued_mail_arrives_rendered_from_both_templates(
    settings: Settings, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    with transaction(engine) as session:
        queue_notice(session, settings)
    assert deliver_due(engine, settings) == 1
    [mail] = smtp_server.received
    msg = mail.message
    assert msg["Subject"] == "You are already subscribed to World View"
    assert msg["To"].addresses[0].display_name == "Ada Lovelace"
    assert msg["Reply-To"] == "editor@news.example.com"
    assert mail.mail_from == settings.mail_from
    text, html = body(mail, "plain"), body(mail, "html")
    assert "Hello Ada," in text and UNSUBSCRIBE in text and f'href="{UNSUBSCRIBE}"' in html
    assert settings.postal_address in text and settings.postal_address in html
    [row] = outbox_rows(engine)
    assert (row.kind, row.recipient, row.status) == (
        "already-subscribed",
        "ada@example.com",
        MailStatus.sent,
    )


def test_a_failed_request_leaves_no_mail_behind(
    settings: Settings, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    with pytest.raises(RuntimeError), transaction(engine) as session:
        queue_notice(session, settings)
        raise RuntimeError("the request fails after queueing its mail")
    assert outbox_rows(engine) == []
    assert deliver_due(engine, settings) == 0 and smtp_server.received == []


def test_a_mail_missing_a_value_fails_instead_of_going_out_half_written(
    settings: Settings, engine: Engine
) -> None:
    with pytest.raises(jinja2.UndefinedError), transaction(engine) as session:
        outbox.queue(  # no confirm_url: the link a reader needs would be missing
            session,
            build_context(settings),
            kind="confirm",
            to="ada@example.com",
            template="confirm",
            email="ada@example.com",
            valid_days=7,
        )
    assert outbox_rows(engine) == []


def test_pages_and_mails_show_the_same_site_name_and_postal_address(
    make_client: Callable[..., TestClient], smtp_server: SmtpTestServer
) -> None:
    client = make_client(from_name="Harbour Notes", postal_address="Harbour Notes, 9 Quay Street")
    page = client.get("/")
    assert "Harbour Notes, 9 Quay Street" in page.text and "· Harbour Notes</title>" in page.text
    client.post("/subscribe", data={"email": "ada@example.com"})
    [mail] = smtp_server.wait_for(1, to="ada@example.com")
    assert mail.message["Subject"] == "Confirm your subscription to Harbour Notes"
    for part in ("plain", "html"):
        assert "Harbour Notes, 9 Quay Street" in body(mail, part), part

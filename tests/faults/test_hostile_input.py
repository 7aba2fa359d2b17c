"""Hostile input: the app's own OpenAPI schema, fuzzed by schemathesis against a real server,
never earns a 5xx or a response outside the schema; and markup, template syntax, CR/LF and
very long strings in every field that reaches a page, a mail or a header stay inert."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.engine import Engine

from service.db import transaction
from service.delivery.courier import Courier
from service.delivery.daily import Dispatcher
from service.mail.smtp import relay_target
from service.models import Subscriber, SubscriberStatus
from service.web.app import create_app
from tests.conftest import make_settings
from tests.helpers import eventually, links, outbox_idle, path_of
from tests.smtp_server import SmtpTestServer
from tests.web.live import serving

ADMIN_TOKEN = "hostile-input-admin-token"


@pytest.fixture
def live_api(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> Iterator[str]:
    app_settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        admin_token=ADMIN_TOKEN,
        subscribe_per_ip_per_hour=10_000,
        feedback_per_ip_per_hour=10_000,
    )
    with serving(create_app(app_settings, engine, scheduler=False), app_settings) as url:
        yield url


FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_answers_every_generated_request_within_its_schema(
    live_api: str, mode: GenerationMode
) -> None:
    """Every operation of /openapi.json, with valid and with invalid input."""
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_within_schema(case: schemathesis.Case) -> None:
            # Made-up framing headers (a Content-Length of "U2{p") are refused by the HTTP
            # server itself, in plain text, before the app sees the request: not the API's
            # input, so not the API's to answer.
            for name in [n for n in case.headers or {} if n.lower() in FRAMING_HEADERS]:
                del case.headers[name]  # type: ignore[union-attr]
            case.call_and_validate(
                base_url=live_api,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                checks=CHECKS,
            )

        try:
            answers_within_schema()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # no input that could be made invalid


HOSTILE = [
    '<script>alert("owned")</script>',
    "{{ 7*7 }} {% raw %}",
    "Ada\r\nBcc: victim@example.org",
    "W" * 10_000,
]
HEADER_NAMES = frozenset(
    name.lower()
    for name in (
        "From", "To", "Subject", "Date", "Message-ID", "Reply-To", "List-Id",
        "List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding",
    )
)  # fmt: skip


def _assert_inert_page(html: str) -> None:
    assert "<script>alert" not in html
    assert "49 " not in html.replace("{{ 7*7 }}", "")  # the template never evaluated it


def _assert_inert_mail(data: bytes) -> None:
    head, _, _body = data.partition(b"\r\n\r\n")
    assert head.isascii(), "headers must be ASCII on the wire"
    lines = head.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    names = {line.split(b":", 1)[0].decode().lower() for line in lines if line[:1] not in b" \t"}
    assert names <= HEADER_NAMES, names - HEADER_NAMES  # nothing injected
    message = email.message_from_bytes(data, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() == "text/html":  # plain text may show markup as text
            assert "<script" not in part.get_content().lower()


@pytest.mark.parametrize("value", HOSTILE, ids=["markup", "template", "crlf", "long"])
def test_hostile_text_in_every_field_stays_inert(
    value: str, make_client: Callable[..., TestClient], smtp_server: SmtpTestServer, engine: Engine
) -> None:
    client = make_client(
        admin_token=ADMIN_TOKEN,
        feedback_notify="editor@news.example.com",
        subscribe_per_ip_per_hour=1000,
        feedback_per_ip_per_hour=1000,
    )
    answers = [
        client.get("/", params={"email": value[:320]}),
        client.post("/subscribe", data={"email": "reader@example.com", "name": value}),
        client.post("/subscribe", data={"email": value, "name": "Ada"}),
        client.post("/feedback", data={"category": "other", "message": value}),
        client.post("/feedback", data={"category": value, "message": "hi", "reply_to": value}),
        client.post("/api/v1/subscriptions", json={"email": "api@example.com", "name": value}),
        client.post("/api/v1/feedback", json={"category": "content", "message": value}),
        client.get("/feedback", params={"t": value[:400]}),
        client.get(f"/confirm/{quote(value[:300], safe='')}"),
        client.get(f"/unsubscribe/{quote(value[:300], safe='')}"),
    ]
    front = f"---\ntitle: {json.dumps(value)}\ndate: 2016-02-05\n---\n\n"
    column = f"{front}{value}\n\n## {value[:200]}\n\nBody.\n"
    posted = client.post(
        "/api/v1/admin/columns",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"text": column, "format": "markdown", "name": value[:200]},
    )
    answers.append(posted)
    for answer in answers:
        assert answer.status_code < 500, (answer.request.url, answer.text[:500])
        if "html" in answer.headers.get("content-type", ""):
            _assert_inert_page(answer.text)
    assert posted.status_code in (200, 201), posted.text
    for path in (posted.json()["url"].removeprefix("https://news.example.com"), "/columns"):
        page = client.get(path)
        assert page.status_code == 200
        _assert_inert_page(page.text)
    ET.fromstring(client.get("/feed.xml").content)  # still well-formed XML

    # The reader who gave the hostile name confirms (unless the name was refused as too long),
    # and every reader gets the column with the hostile title.
    with transaction(engine) as session:
        session.add(Subscriber(email="plain@example.com", status=SubscriberStatus.active))
    assert eventually(lambda: outbox_idle(engine), timeout=10)
    if confirmations := smtp_server.messages_to("reader@example.com"):
        [confirmation] = confirmations
        [link] = links(confirmation, "/confirm/")
        assert client.post(path_of(link)).status_code == 200
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    asyncio.run(
        Dispatcher(Courier(engine, ctx, relay_target(ctx.settings))).run_daily(dt.date(2016, 2, 5))
    )
    [mail] = smtp_server.messages_to("plain@example.com")
    subject = str(mail.message["Subject"])
    assert "\r" not in subject and "\n" not in subject
    assert " ".join(value.split())[:60] in " ".join(subject.split())
    assert eventually(lambda: outbox_idle(engine), timeout=10)  # the last feedback notices
    for received in smtp_server.received:
        _assert_inert_mail(received.data)

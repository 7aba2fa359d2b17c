"""The "having issues? let us know" flow: stored, pre-filled from a mail's link, rate-limited,
bots dropped, and passed on by mail when FEEDBACK_NOTIFY is set."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import feedback
from service.models import Feedback
from tests.helpers import add_reader, body
from tests.smtp_server import SmtpTestServer


@pytest.fixture
def notify_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(feedback_notify="editor@news.example.com")


def stored(engine: Engine) -> list[Feedback]:
    with Session(engine) as session:
        return list(session.exec(select(Feedback)))


def test_feedback_form_is_stored_and_mailed_to_the_editor(
    notify_client: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    form = notify_client.get("/feedback")
    assert form.status_code == 200 and "Having issues? Let us know" in form.text
    for value in ("delivery", "commenting", "content", "other"):
        assert f'value="{value}"' in form.text
    sent = notify_client.post(
        "/feedback",
        data={
            "category": "delivery",
            "message": "The column arrives at noon, not 6 am.",
            "reply_to": "Reader@Example.com",
        },
    )
    assert sent.status_code == 200 and "Thank you" in sent.text
    [row] = stored(engine)
    assert (row.category, row.reply_to, row.subscriber_id) == (
        "delivery",
        "reader@example.com",
        None,
    )
    [mail] = smtp_server.wait_for(1, to="editor@news.example.com")
    assert mail.message["Subject"] == "[World View feedback] Delivery problem"
    assert mail.message["Reply-To"] == "reader@example.com"
    assert "The column arrives at noon" in body(mail, "plain")


def test_link_from_a_mail_identifies_the_subscriber(
    notify_client: TestClient, engine: Engine
) -> None:
    reader_id = add_reader(engine, "ada@example.com")
    url = notify_client.app.state.ctx.links.feedback_url(reader_id)  # type: ignore[attr-defined]
    token = urlsplit(url).query.removeprefix("t=")
    form = notify_client.get(f"/feedback?t={token}")
    assert "ada@example.com" in form.text and f'value="{token}"' in form.text
    notify_client.post(
        "/feedback", data={"category": "content", "message": "Typo in KEYS", "t": token}
    )
    assert stored(engine)[0].subscriber_id == reader_id
    tampered = notify_client.get(f"/feedback?t={token[:-2]}xx")
    assert tampered.status_code == 200 and "ada@example.com" not in tampered.text


def test_honeypot_drops_bots_silently(
    notify_client: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    page = notify_client.post(
        "/feedback", data={"category": "other", "message": "Buy pills", "website": "spam.example"}
    )
    assert page.status_code == 200 and "Thank you" in page.text
    api = notify_client.post(
        "/api/v1/feedback", json={"category": "other", "message": "x", "website": "y"}
    )
    assert api.status_code == 202
    assert stored(engine) == [] and smtp_server.received == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"category": "weather", "message": "hi"}, "Choose one of"),
        ({"category": "other", "message": "   "}, "Tell us what went wrong"),
        ({"category": "other", "message": "x" * 4001}, "under 4000"),
        (
            {"category": "other", "message": "hi", "reply_to": "nobody\r\nBcc: x@example.com"},
            "line breaks",
        ),
        ({}, "Choose one of"),
    ],
)
def test_bad_feedback_gets_a_clear_422(
    data: dict[str, str], field: str, notify_client: TestClient, engine: Engine
) -> None:
    page = notify_client.post("/feedback", data=data)
    assert page.status_code == 422 and field in page.text
    assert stored(engine) == []


def test_feedback_api_and_its_rate_limit(notify_client: TestClient, engine: Engine) -> None:
    limit = notify_client.app.state.ctx.settings.feedback_per_ip_per_hour  # type: ignore[attr-defined]
    codes = [
        notify_client.post(
            "/api/v1/feedback", json={"category": "other", "message": f"n{i}"}
        ).status_code
        for i in range(limit + 1)
    ]
    assert codes == [202] * limit + [429]
    assert len(stored(engine)) == limit
    assert (
        notify_client.post("/feedback", data={"category": "other", "message": "more"}).status_code
        == 429
    )
    unknown = notify_client.post(
        "/api/v1/feedback", json={"category": "other", "message": "x", "extra": 1}
    )
    assert unknown.status_code == 422


def test_the_api_schema_lists_the_categories_and_both_bot_traps(notify_client: TestClient) -> None:
    schemas = notify_client.get("/openapi.json").json()["components"]["schemas"]
    category = schemas["FeedbackIn"]["properties"]["category"]
    # The same shape as the hand-written Literal it replaced: an inline enum of strings.
    assert category == {"enum": list(feedback.CATEGORIES), "title": "Category", "type": "string"}
    for model in ("FeedbackIn", "SubscriptionIn"):
        trap = schemas[model]["properties"]["website"]
        assert trap["description"] == "leave empty (bot trap)", model

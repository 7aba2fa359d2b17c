"""The reader's whole lifecycle over HTTP, against a real SMTP server and database."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.models import Consent, OutboxMail, RateBucket, Subscriber, SubscriberStatus
from service.tokens import Purpose
from tests.helpers import (
    add_reader,
    body,
    eventually,
    links,
    outbox_idle,
    outbox_rows,
    path_of,
    reader,
)
from tests.smtp_server import Received, SmtpTestServer

READER = "reader@example.com"


def subscribe_and_get_confirm_path(
    client: TestClient, smtp: SmtpTestServer, email: str = READER
) -> str:
    before = len(smtp.messages_to(email))
    response = client.post("/subscribe", data={"email": email, "name": "Ada"})
    assert response.status_code == 200
    mails = smtp.wait_for(before + 1, to=email)
    assert len(mails) == before + 1, "the confirmation mail did not arrive"
    [url] = links(mails[-1], "/confirm/")
    return path_of(url)


def unsubscribe_path(client: TestClient, subscriber_id: int) -> str:
    return path_of(client.app.state.ctx.links.unsubscribe_url(subscriber_id))  # type: ignore[attr-defined]


def resubscribe_path(goodbye_page: str) -> str:
    """The action of the goodbye page's "Subscribe again" form."""
    [action] = re.findall(r'action="(/resubscribe/[^"]+)"', goodbye_page)
    return str(action)


def set_status(engine: Engine, status: SubscriberStatus) -> None:
    """What bounce or complaint processing does to a reader."""
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber).where(Subscriber.email == READER)).one()
        subscriber.status = status
        session.add(subscriber)
        session.commit()


def the_outbox_mail_once(
    engine: Engine, ready: Callable[[OutboxMail], object]
) -> OutboxMail | None:
    """The one outbox mail as soon as `ready` says so; None if it never does within 10 s."""

    def check() -> OutboxMail | None:
        [row] = outbox_rows(engine)
        return row if ready(row) else None

    return eventually(check, timeout=10, every=0.02)


def consent_actions(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return [c.action for c in session.exec(select(Consent).order_by(Consent.id))]


def test_whole_lifecycle_subscribe_confirm_unsubscribe_resubscribe(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    confirm = subscribe_and_get_confirm_path(app_client, smtp_server)
    assert reader(engine, READER).status == SubscriberStatus.pending

    page = app_client.get(confirm)
    assert page.status_code == 200 and "Confirm subscription" in page.text
    assert app_client.head(confirm).status_code == 200
    assert reader(engine, READER).status == SubscriberStatus.pending

    done = app_client.post(confirm)
    assert done.status_code == 200 and "subscribed" in done.text
    subscriber = reader(engine, READER)
    assert subscriber.status == SubscriberStatus.active and subscriber.name == "Ada"

    unsubscribe = unsubscribe_path(app_client, subscriber.id or 0)
    page = app_client.get(unsubscribe)
    assert page.status_code == 200 and "Unsubscribe" in page.text
    assert reader(engine, READER).status == SubscriberStatus.active

    bye = app_client.post(unsubscribe)
    assert bye.status_code == 200 and "Subscribe again" in bye.text
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed
    assert app_client.post(unsubscribe).status_code == 200  # twice is fine

    again = app_client.post(resubscribe_path(bye.text))
    assert again.status_code == 200 and "Welcome back" in again.text
    assert reader(engine, READER).status == SubscriberStatus.active
    assert consent_actions(engine) == ["subscribe", "confirm", "unsubscribe", "resubscribe"]


def test_no_mail_is_sent_after_unsubscribe(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    app_client.post(subscribe_and_get_confirm_path(app_client, smtp_server))
    subscriber = reader(engine, READER)
    app_client.post(unsubscribe_path(app_client, subscriber.id or 0))
    assert eventually(lambda: outbox_idle(engine), timeout=10)
    assert len(smtp_server.messages_to(READER)) == 1  # only the confirmation


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_rfc8058_one_click_unsubscribes_at_once(
    encoding: str, app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    app_client.post(subscribe_and_get_confirm_path(app_client, smtp_server))
    subscriber = reader(engine, READER)
    path = unsubscribe_path(app_client, subscriber.id or 0)
    if encoding == "urlencoded":
        response = app_client.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        response = app_client.post(path, files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert response.headers.get("location") is None and "set-cookie" not in response.headers
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed
    with Session(engine) as session:
        consent = session.exec(
            select(Consent).where(Consent.action == "one-click-unsubscribe")
        ).one()
    assert consent.subscriber_id == subscriber.id


def test_get_and_head_on_links_change_nothing(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    confirm = subscribe_and_get_confirm_path(app_client, smtp_server)
    for _ in range(3):
        app_client.get(confirm)
        app_client.head(confirm)
    assert reader(engine, READER).status == SubscriberStatus.pending
    app_client.post(confirm)
    unsubscribe = unsubscribe_path(app_client, reader(engine, READER).id or 0)
    for _ in range(3):
        app_client.get(unsubscribe)
        app_client.head(unsubscribe)
    assert reader(engine, READER).status == SubscriberStatus.active


def test_confirmation_mail_is_well_formed(
    app_client: TestClient, smtp_server: SmtpTestServer
) -> None:
    subscribe_and_get_confirm_path(app_client, smtp_server)
    mail = smtp_server.messages_to(READER)[0]
    msg = mail.message
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    for header in ("Date", "Message-ID", "From", "To", "Subject"):
        assert msg[header], header
    assert msg["From"].addresses[0].display_name == "World View"
    assert msg["To"].addresses[0].addr_spec == READER
    assert mail.mail_from == "bounces@news.example.com"  # the envelope sender
    assert b"\r\n" in mail.data and b"\n" not in mail.data.replace(b"\r\n", b"")
    for part in msg.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
    assert all(len(line) <= 76 for line in mail.data.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))


def test_same_answer_for_known_and_unknown_addresses(
    app_client: TestClient, smtp_server: SmtpTestServer
) -> None:
    app_client.post(subscribe_and_get_confirm_path(app_client, smtp_server, "known@example.com"))
    known = app_client.post("/subscribe", data={"email": "known@example.com"})
    unknown = app_client.post("/subscribe", data={"email": "other@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("known@", "X@") == unknown.text.replace("other@", "X@")
    api_known = app_client.post("/api/v1/subscriptions", json={"email": "known@example.com"})
    api_unknown = app_client.post("/api/v1/subscriptions", json={"email": "third@example.com"})
    assert api_known.status_code == api_unknown.status_code == 202
    assert api_known.json() == api_unknown.json()


def test_active_reader_gets_at_most_one_notice_a_day(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    app_client.post(subscribe_and_get_confirm_path(app_client, smtp_server))
    app_client.post("/subscribe", data={"email": READER})
    app_client.post("/subscribe", data={"email": READER.upper()})
    assert eventually(lambda: outbox_idle(engine), timeout=10)
    mails = smtp_server.messages_to(READER)
    assert [m.message["Subject"] for m in mails] == [
        "Confirm your subscription to World View",
        "You are already subscribed to World View",
    ]
    assert links(mails[1], "/unsubscribe/")


def test_addresses_are_unique_case_insensitively(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    app_client.post("/subscribe", data={"email": "Mixed.Case@Example.COM"})
    app_client.post("/subscribe", data={"email": "mixed.case@example.com"})
    with Session(engine) as session:
        rows = session.exec(select(Subscriber)).all()
    assert [r.email for r in rows] == ["mixed.case@example.com"]


@pytest.mark.parametrize(
    "email",
    [
        "",
        "not-an-address",
        "a@b",
        "x" * 250 + "@example.com",
        "reader@example.com\r\nBcc: victim@example.com",
        "reader@exa mple.com",
        "<script>@example.com",
    ],
)
def test_malformed_addresses_get_a_clear_422(
    email: str, app_client: TestClient, engine: Engine
) -> None:
    page = app_client.post("/subscribe", data={"email": email})
    assert page.status_code == 422
    assert 'role="alert"' in page.text
    api = app_client.post("/api/v1/subscriptions", json={"email": email})
    assert api.status_code == 422
    assert api.json()["detail"]
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []


@pytest.mark.parametrize("name", ["Ada\r\nBcc: victim@example.com", "Ada\nX", "A" * 101, "Ada\x00"])
def test_header_injection_in_name_is_refused(
    name: str, app_client: TestClient, engine: Engine
) -> None:
    assert app_client.post("/subscribe", data={"email": READER, "name": name}).status_code == 422
    assert (
        app_client.post("/api/v1/subscriptions", json={"email": READER, "name": name}).status_code
        == 422
    )
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []


def test_a_filled_honeypot_gets_the_usual_answer_and_nothing_else(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    trap = "spam.example"
    page = app_client.post("/subscribe", data={"email": READER, "website": trap})
    api = app_client.post("/api/v1/subscriptions", json={"email": READER, "website": trap})
    with Session(engine) as session:
        for table in (Subscriber, Consent, OutboxMail, RateBucket):
            assert session.exec(select(table)).all() == [], table.__name__
    real_page = app_client.post("/subscribe", data={"email": "human@example.com"})
    real_api = app_client.post("/api/v1/subscriptions", json={"email": "other@example.com"})
    assert page.status_code == real_page.status_code == 200
    assert page.text.replace(READER, "X") == real_page.text.replace("human@example.com", "X")
    assert api.status_code == real_api.status_code == 202
    assert api.json() == real_api.json()
    smtp_server.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        "human@example.com",
        "other@example.com",
    ]


def test_api_rejects_unknown_fields_empty_and_non_json_bodies(app_client: TestClient) -> None:
    unknown = app_client.post("/api/v1/subscriptions", json={"email": READER, "admin": True})
    assert unknown.status_code == 422 and "admin" in unknown.text
    assert app_client.post("/api/v1/subscriptions").status_code == 422
    assert app_client.post("/api/v1/subscriptions", json={}).status_code == 422
    garbage = app_client.post(
        "/api/v1/subscriptions", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert garbage.status_code == 422
    assert app_client.post("/subscribe").status_code == 422  # empty form


def test_tampered_expired_and_reused_confirmation_links(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    confirm = subscribe_and_get_confirm_path(app_client, smtp_server)
    tampered = confirm[:-3] + ("AAA" if not confirm.endswith("AAA") else "BBB")
    for method in (app_client.get, app_client.post):
        response = method(tampered)
        assert response.status_code == 400 and "not valid" in response.text
    subscriber = reader(engine, READER)
    ctx = app_client.app.state.ctx  # type: ignore[attr-defined]
    old = ctx.tokens.make(
        Purpose.confirm, f"{subscriber.id}-{subscriber.confirm_nonce}", expires=int(time.time()) - 1
    )
    expired = app_client.post(f"/confirm/{old}")
    assert (
        expired.status_code == 410
        and "expired" in expired.text
        and 'action="/subscribe"' in expired.text
    )
    assert reader(engine, READER).status == SubscriberStatus.pending

    assert app_client.post(confirm).status_code == 200
    again = app_client.post(confirm)  # double confirm
    assert again.status_code == 200 and "Already confirmed" in again.text
    app_client.post(unsubscribe_path(app_client, subscriber.id or 0))
    reused = app_client.post(confirm)  # an old link must not undo an unsubscribe
    assert reused.status_code == 410 and "already been used" in reused.text
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed


def test_token_for_one_purpose_is_refused_for_another(
    app_client: TestClient, engine: Engine
) -> None:
    ctx = app_client.app.state.ctx  # type: ignore[attr-defined]
    feedback_token = ctx.tokens.make(Purpose.feedback, str(add_reader(engine, READER)))
    assert app_client.post(f"/unsubscribe/{feedback_token}").status_code == 400
    assert app_client.post(f"/confirm/{feedback_token}").status_code == 400
    assert reader(engine, READER).status == SubscriberStatus.active
    assert app_client.post("/unsubscribe/garbage").status_code == 400
    assert app_client.get("/unsubscribe/" + "x" * 5000).status_code == 400


def test_api_confirm_and_unsubscribe(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    token = subscribe_and_get_confirm_path(app_client, smtp_server).removeprefix("/confirm/")
    confirmed = app_client.post("/api/v1/confirmations", json={"token": token})
    assert confirmed.status_code == 200 and confirmed.json() == {
        "email": READER,
        "status": "active",
    }
    assert app_client.post("/api/v1/confirmations", json={"token": token}).status_code == 409
    assert app_client.post("/api/v1/confirmations", json={"token": token + "x"}).status_code == 400
    subscriber = reader(engine, READER)
    unsub = unsubscribe_path(app_client, subscriber.id or 0).removeprefix("/unsubscribe/")
    gone = app_client.post("/api/v1/unsubscriptions", json={"token": unsub})
    assert gone.json() == {"email": READER, "status": "unsubscribed"}


# Names: only a confirmed address gets one ---------------------------------------------


def text_of(mail: Received) -> str:
    return body(mail, "plain") + "\n" + body(mail, "html")


def test_confirmation_mail_does_not_echo_the_name_given(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    name = "Claim your prize at evil.example"
    app_client.post("/subscribe", data={"email": READER, "name": name})
    [mail] = smtp_server.wait_for(1, to=READER)
    assert "evil.example" not in text_of(mail) and "Hello," in text_of(mail)
    assert mail.message["To"].addresses[0].display_name == ""
    subscriber = reader(engine, READER)
    assert (subscriber.name, subscriber.pending_name) == ("", name)


def test_the_name_becomes_the_readers_when_the_address_confirms(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    app_client.post(subscribe_and_get_confirm_path(app_client, smtp_server))
    subscriber = reader(engine, READER)
    assert (subscriber.name, subscriber.pending_name) == ("Ada", None)


def test_a_subscribe_request_never_renames_an_active_reader(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    add_reader(engine, READER, name="Ada")
    page = app_client.post("/subscribe", data={"email": READER, "name": "Mallory"})
    assert page.status_code == 200
    [notice] = smtp_server.wait_for(1, to=READER)
    assert "Mallory" not in text_of(notice)
    subscriber = reader(engine, READER)
    assert (subscriber.name, subscriber.pending_name) == ("Ada", None)


@pytest.mark.parametrize(("given", "after_confirming"), [("Mallory", "Mallory"), ("", "Ada")])
def test_a_returning_reader_keeps_their_name_until_they_confirm(
    given: str,
    after_confirming: str,
    app_client: TestClient,
    smtp_server: SmtpTestServer,
    engine: Engine,
) -> None:
    add_reader(engine, READER, status=SubscriberStatus.unsubscribed, name="Ada")
    app_client.post("/subscribe", data={"email": READER, "name": given})
    [mail] = smtp_server.wait_for(1, to=READER)
    assert "Mallory" not in text_of(mail)
    subscriber = reader(engine, READER)
    assert subscriber.name == "Ada"
    assert subscriber.status == SubscriberStatus.pending
    [url] = links(mail, "/confirm/")
    assert app_client.post(path_of(url)).status_code == 200
    subscriber = reader(engine, READER)
    assert (subscriber.name, subscriber.pending_name) == (after_confirming, None)


# Subscribing again after unsubscribing ------------------------------------------------


def test_the_unsubscribe_link_no_longer_resubscribes(
    app_client: TestClient, engine: Engine
) -> None:
    unsubscribe = unsubscribe_path(app_client, add_reader(engine, READER))
    app_client.post(unsubscribe)
    page = app_client.post(f"{unsubscribe}/resubscribe")
    assert page.status_code == 200 and 'action="/subscribe"' in page.text
    assert READER in page.text  # the form is filled in; a confirmation mail follows
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed
    assert consent_actions(engine) == ["unsubscribe"]


def test_the_resubscribe_link_changes_nothing_on_get(
    app_client: TestClient, engine: Engine
) -> None:
    bye = app_client.post(unsubscribe_path(app_client, add_reader(engine, READER)))
    resubscribe = resubscribe_path(bye.text)
    assert app_client.get(resubscribe).status_code == 405
    assert app_client.head(resubscribe).status_code == 405
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed


def test_an_expired_resubscribe_token_is_refused(app_client: TestClient, engine: Engine) -> None:
    bye = app_client.post(unsubscribe_path(app_client, add_reader(engine, READER)))
    payload = resubscribe_path(bye.text).removeprefix("/resubscribe/").split(".")[0]
    ctx = app_client.app.state.ctx  # type: ignore[attr-defined]
    old = ctx.tokens.make(Purpose.resubscribe, payload, expires=int(time.time()) - 1)
    page = app_client.post(f"/resubscribe/{old}")
    assert page.status_code == 410 and "expired" in page.text and 'action="/subscribe"' in page.text
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed


def test_the_resubscribe_token_lives_two_days(app_client: TestClient, engine: Engine) -> None:
    bye = app_client.post(unsubscribe_path(app_client, add_reader(engine, READER)))
    expiry = resubscribe_path(bye.text).split(".")[1]
    lifetime = int(expiry, 36) - time.time()
    assert 2 * 86400 - 60 < lifetime <= 2 * 86400


@pytest.mark.parametrize("status", [SubscriberStatus.bounced, SubscriberStatus.complained])
def test_a_bounced_or_complained_reader_is_not_reactivated(
    status: SubscriberStatus, app_client: TestClient, engine: Engine
) -> None:
    bye = app_client.post(unsubscribe_path(app_client, add_reader(engine, READER)))
    set_status(engine, status)  # a late bounce or complaint about an earlier mail
    page = app_client.post(resubscribe_path(bye.text))
    assert page.status_code == 409 and 'action="/subscribe"' in page.text
    assert "Nothing has changed" in page.text
    assert reader(engine, READER).status == status
    assert consent_actions(engine) == ["unsubscribe"]
    goodbye = app_client.post(unsubscribe_path(app_client, reader(engine, READER).id or 0))
    assert goodbye.status_code == 200 and "/resubscribe/" not in goodbye.text


def test_a_resubscribe_token_undoes_only_its_own_unsubscribe(
    app_client: TestClient, engine: Engine
) -> None:
    unsubscribe = unsubscribe_path(app_client, add_reader(engine, READER))
    first = resubscribe_path(app_client.post(unsubscribe).text)
    assert app_client.post(first).status_code == 200
    assert app_client.post(first).status_code == 200  # pressed twice: still welcome
    app_client.post(unsubscribe)
    stale = app_client.post(first)
    assert stale.status_code == 409
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed
    assert consent_actions(engine) == ["unsubscribe", "resubscribe", "unsubscribe"]


def test_subscription_bombing_is_limited_per_address(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    limit = app_client.app.state.ctx.settings.subscribe_per_address_per_hour  # type: ignore[attr-defined]
    codes = [
        app_client.post("/subscribe", data={"email": "victim@example.com"}).status_code
        for _ in range(limit + 2)
    ]
    assert codes == [200] * limit + [429, 429]
    limited = app_client.post("/subscribe", data={"email": "victim@example.com"})
    assert int(limited.headers["Retry-After"]) > 0 and "Too many" in limited.text
    assert eventually(lambda: outbox_idle(engine), timeout=10)  # and nothing more follows
    assert len(smtp_server.messages_to("victim@example.com")) == limit


def test_subscriptions_are_limited_per_client_ip(app_client: TestClient) -> None:
    limit = app_client.app.state.ctx.settings.subscribe_per_ip_per_hour  # type: ignore[attr-defined]
    codes = [
        app_client.post("/api/v1/subscriptions", json={"email": f"r{i}@example.com"}).status_code
        for i in range(limit + 1)
    ]
    assert codes == [202] * limit + [429]


def test_smtp_down_while_subscribing_mail_arrives_when_it_is_back(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    smtp_server.stop()
    started = time.monotonic()
    response = app_client.post("/subscribe", data={"email": READER})
    assert response.status_code == 200 and time.monotonic() - started < 2
    # the sender tries, fails and schedules a retry
    row = the_outbox_mail_once(engine, lambda mail: mail.status == "pending" and mail.last_error)
    assert (
        row is not None
        and row.status == "pending"
        and row.attempts >= 1
        and "connection failed" in (row.last_error or "")
    )
    smtp_server.start()  # same port
    mails = smtp_server.wait_for(1, timeout=15, to=READER)
    assert len(mails) == 1 and links(mails[0], "/confirm/")
    # the ledger update lands just after the hand-off
    assert the_outbox_mail_once(engine, lambda mail: mail.status == "sent")


def test_permanent_smtp_refusal_is_recorded_not_retried(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    smtp_server.reply_to_rcpt(READER, "550 5.1.1 No such user")
    app_client.post("/subscribe", data={"email": READER})
    row = the_outbox_mail_once(engine, lambda mail: mail.status == "failed")
    assert row is not None
    assert row.status == "failed" and "550" in (row.last_error or "") and row.attempts == 1


def test_consent_records_time_ip_user_agent_and_source(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    app_client.post(
        "/api/v1/subscriptions", json={"email": READER}, headers={"User-Agent": "TestBrowser/1"}
    )
    with Session(engine) as session:
        consent = session.exec(select(Consent)).one()
    assert consent.action == "subscribe" and consent.source == "api"
    assert consent.user_agent == "TestBrowser/1" and consent.ip and consent.at


def test_healthz_and_openapi(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    schema = app_client.get("/openapi.json").json()
    assert {
        "/api/v1/subscriptions",
        "/api/v1/feedback",
        "/api/v1/confirmations",
        "/api/v1/unsubscriptions",
    } <= set(schema["paths"])
    docs = app_client.get("/docs")
    # Swagger UI's inline script is allowed by its hash, nothing else inline.
    assert docs.status_code == 200 and "'sha256-" in docs.headers["content-security-policy"]


def test_unknown_page_is_a_404_page_not_a_traceback(app_client: TestClient) -> None:
    page = app_client.get("/no/such/page")
    assert page.status_code == 404 and "Page not found" in page.text
    assert app_client.get("/api/v1/nothing").json() == {"detail": "Not Found"}


def test_pages_carry_security_headers(app_client: TestClient) -> None:
    headers = app_client.get("/").headers
    # Tokens never leave for other sites; same-origin keeps our own forms' Origin header.
    assert headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors" in headers["Content-Security-Policy"]


# The address a reader types: the fast path (a cached domain) against email-validator ---------

ATEXT = "aZ09.+-_'&=!#{}|~/?^`$%*"  # what a plain dot-atom is made of (RFC 5322 3.2.3)
ADDRESS_CHARS = "aZ09.+-_'&=!#{}|~\"(),:;<>@[]\\ éß\u2028\x00\t"
DOMAINS = st.sampled_from(
    [
        "example.com",
        "EXAMPLE.org",
        "xn--bcher-kva.example",
        "bücher.example",
        "sub.domain.example.co.uk",
        "localhost",
        "a..b.example",
        "-bad.example",
        "example.com.",
        "x" * 64 + ".example",
        "exa mple.com",
        "[127.0.0.1]",
        "ex@mple.com",
        "",
    ]
)


def slow_normalize(value: str) -> str:
    """What email-validator alone makes of an address (the cache left out)."""
    from service import subscriptions

    saved = dict(subscriptions._DOMAINS)
    subscriptions._DOMAINS.clear()
    try:
        return subscriptions._validated(value.strip())
    finally:
        subscriptions._DOMAINS.clear()
        subscriptions._DOMAINS.update(saved)


def outcome(normalize: Callable[[str], str], value: str) -> tuple[str, str]:
    from service.errors import InvalidInput

    try:
        return ("ok", normalize(value))
    except InvalidInput as exc:
        return ("invalid", exc.field)


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    local=st.text(ADDRESS_CHARS, max_size=80), domain=DOMAINS, padding=st.sampled_from(["", " "])
)
def test_a_cached_domain_answers_exactly_as_email_validator(
    local: str, domain: str, padding: str
) -> None:
    from service.subscriptions import normalize_address

    value = f"{padding}{local}@{domain}{padding}"
    if outcome(slow_normalize, f"a@{domain}")[0] == "ok":
        normalize_address(f"warm.up@{domain}")  # the domain is in the cache from here on
    assert outcome(normalize_address, value) == outcome(slow_normalize, value)


def test_long_addresses_at_a_cached_domain_are_refused_as_before() -> None:
    from service.subscriptions import normalize_address

    domain = "d" * 60 + ".example.com"
    normalize_address(f"warm.up@{domain}")
    for size in range(170, 200):
        value = f"{'a' * size}@{domain}"
        assert outcome(normalize_address, value) == outcome(slow_normalize, value), size


def test_many_people_subscribing_at_once_all_get_their_confirmation_queued(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = make_client(subscribe_per_ip_per_hour=1000)
    addresses = [f"crowd{n}@example.com" for n in range(48)]

    def post(address: str) -> int:
        return client.post("/subscribe", data={"email": address, "name": "Crowd"}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, addresses))
    assert statuses == [200] * len(addresses)
    confirmations = [m.recipient for m in outbox_rows(engine) if m.kind == "confirm"]
    assert sorted(confirmations) == sorted(addresses)


def test_subscribe_requests_committed_together_each_get_their_own_outcome(
    settings: Settings, engine: Engine
) -> None:
    # New addresses, a known one asked again and one whose hourly count is spent, in one
    # GroupCommit batch: on PostgreSQL their statements go together and each reader's id is
    # drawn before its row, so each confirmation link must still name its own reader.
    import asyncio
    from datetime import timedelta
    from email import message_from_bytes, policy

    from service import subscriptions
    from service.clock import utcnow
    from service.context import Requester, build_context
    from service.db import GroupCommit, transaction
    from service.errors import RateLimited

    ctx = build_context(settings.model_copy(update={"subscribe_per_address_per_hour": 1}))
    who, now = Requester(ip="192.0.2.7", user_agent="test", source="web"), utcnow()
    with transaction(engine) as session:  # known: asked two hours ago; spent: a moment ago
        for email, when in [
            ("known@example.com", now - timedelta(hours=2)),
            ("spent@example.com", now),
        ]:
            subscriptions.subscribe(session, ctx, email=email, name=None, who=who, now=when)
    writes = GroupCommit(engine)

    async def one_moment(*asked: str) -> list[object]:
        return await asyncio.gather(
            *(
                writes.run(subscriptions.subscribe, ctx, email=e, name="N", who=who, now=now)
                for e in asked
            ),
            return_exceptions=True,
        )

    # A batch where every request stands, then one where a request is refused and the
    # batch goes again with a savepoint per request.
    assert asyncio.run(one_moment("new1@example.com", "known@example.com")) == [None, None]
    got = asyncio.run(one_moment("new2@example.com", "spent@example.com", "new3@example.com"))
    assert [type(g) for g in got] == [type(None), RateLimited, type(None)]
    mails: dict[str, list[str]] = {}
    for row in outbox_rows(engine):
        text = message_from_bytes(row.message, policy=policy.default).get_body(("plain",))
        [url] = re.findall(r"https://news\.example\.com/confirm/\S+", text.get_content())
        mails.setdefault(row.recipient, []).append(url.rsplit("/", 1)[1])
    assert {k: len(v) for k, v in mails.items()} == {
        "known@example.com": 2,  # asked again: a second confirmation
        "spent@example.com": 1,  # refused: nothing more
        "new1@example.com": 1,
        "new2@example.com": 1,
        "new3@example.com": 1,
    }
    for email, tokens in mails.items():
        found = reader(engine, email)
        for token in tokens:
            assert ctx.tokens.read(Purpose.confirm, token) == f"{found.id}-{found.confirm_nonce}"
        with Session(engine) as session:
            consents = session.exec(select(Consent).where(Consent.subscriber_id == found.id))
            assert len(list(consents)) == len(tokens)


def test_non_ascii_names_domains_and_browsers_go_through_the_subscribe_statements(
    app_client: TestClient, smtp_server: SmtpTestServer, engine: Engine
) -> None:
    # The reader, consent and mail rows are written through the driver's own cursor (and on
    # PostgreSQL in one statement with casts): text in other scripts must arrive whole.
    typed, name, browser = "Leser@Bücher.example", "Zoë Ñandú 李小龍", "Navigateur/1.0 (Mäc; é)"
    response = app_client.post(
        "/subscribe",
        data={"email": typed, "name": name},
        headers={"User-Agent": browser.encode()},
    )
    assert response.status_code == 200
    stored = reader(engine, "leser@xn--bcher-kva.example")  # as normalize_address keeps it
    assert stored.pending_name == name and stored.status == SubscriberStatus.pending
    with Session(engine) as session:
        [consent] = session.exec(select(Consent).where(Consent.subscriber_id == stored.id))
    # The header goes as UTF-8 bytes; HTTP (and Starlette) read header bytes as
    # Latin-1. Whatever the request held is what the consent keeps.
    assert consent.user_agent == browser.encode().decode("latin-1")
    assert consent.action == "subscribe"
    [mail] = smtp_server.wait_for(1)
    [url] = links(mail, "/confirm/")
    assert app_client.post(path_of(url)).status_code == 200
    confirmed = reader(engine, stored.email)
    assert confirmed.status == SubscriberStatus.active and confirmed.name == name

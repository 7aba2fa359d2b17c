"""The admin API: every operator route behind the token, readers found and paged, one
reader's history, unsubscribe, resend, erase; sends paused, resumed and cancelled; columns
previewed, test-copied, rescheduled and cancelled; the feedback inbox."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service import preferences
from service.context import AppContext, Requester
from service.db import transaction
from service.delivery import digests, sends
from service.models import (
    Bounce,
    BounceKind,
    Cadence,
    ColumnRecord,
    Consent,
    Delivery,
    Feedback,
    OutboxMail,
    Send,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
)
from service.subscriptions import suppression_of
from tests.daily import SEED_DAY, add_readers, dispatcher, run_job, start_seed_send
from tests.delivery.test_digest_send import MONDAY, add_columns, title
from tests.delivery.test_digest_send import add_reader as add_weekly_reader
from tests.helpers import add_reader, app_routes, eventually, outbox_idle, reader
from tests.smtp_server import SmtpTestServer

TOKEN = "admin-token-for-the-tests"
WEEK = "2026-W48"  # MONDAY's
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin(make_client: Callable[..., TestClient]) -> TestClient:
    client = make_client(admin_token=TOKEN)
    client.headers.update(AUTH)
    return client


def admin_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /api/v1/admin, ids filled in."""
    found = []
    for route in app_routes(client.app):
        if isinstance(route, APIRoute) and route.path.startswith("/api/v1/admin"):
            path = route.path.replace("{subscriber_id}", "1").replace("{send_id}", "1")
            path = path.replace("{column_id}", "1").replace("{feedback_id}", "1")
            path = path.replace("{week}", WEEK)
            found += [(method, path) for method in route.methods]
    return found


def test_every_admin_route_refuses_a_request_without_the_token(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_token=TOKEN)
    routes = admin_routes(client)
    assert len(routes) >= 18  # the walk found the routes (a renamed prefix would find none)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            answer = client.request(method, path, headers=headers, json={})
            assert answer.status_code == 401, (method, path, headers, answer.status_code)
    off = make_client()  # no ADMIN_TOKEN: the API is off, not open
    for method, path in admin_routes(off):
        assert off.request(method, path, headers=AUTH, json={}).status_code == 503


def test_unknown_ids_are_404_on_every_route(admin: TestClient) -> None:
    for method, path in admin_routes(admin):
        if "/1" not in path:
            continue
        body = {"to": "x@example.com"} if path.endswith("/test") else {}
        answer = admin.request(method, path.replace("/1", "/999999"), json=body)
        assert answer.status_code == 404, (method, path, answer.text)


def test_bad_input_is_422(admin: TestClient) -> None:
    assert admin.get("/api/v1/admin/subscribers?status=sleeping").status_code == 422
    assert admin.get("/api/v1/admin/subscribers?limit=0").status_code == 422
    assert admin.get("/api/v1/admin/subscribers/abc").status_code == 422
    assert admin.get("/api/v1/admin/sends/-3").status_code == 422
    assert admin.patch("/api/v1/admin/columns/1", json={"when": "soon"}).status_code == 422
    assert admin.get("/api/v1/admin/feedback?category=spam").status_code == 422


# Subscribers


def test_readers_are_found_by_exact_address_substring_and_status_in_keyset_pages(
    admin: TestClient, engine: Engine
) -> None:
    add_readers(engine, active=7, pending=2, unsubscribed=1)
    page = admin.get("/api/v1/admin/subscribers", params={"limit": 4}).json()
    ids = [item["id"] for item in page["items"]]
    assert len(ids) == 4 and page["next_after"] == ids[-1]
    seen = list(ids)
    while page["next_after"] is not None:
        page = admin.get(
            "/api/v1/admin/subscribers", params={"limit": 4, "after": page["next_after"]}
        ).json()
        seen += [item["id"] for item in page["items"]]
    assert seen == sorted(seen) and len(seen) == 10

    exact = admin.get("/api/v1/admin/subscribers", params={"email": " Active3@Example.COM "})
    assert [i["email"] for i in exact.json()["items"]] == ["active3@example.com"]
    part = admin.get("/api/v1/admin/subscribers", params={"q": "pending"}).json()["items"]
    assert {i["email"] for i in part} == {"pending0@example.com", "pending1@example.com"}
    gone = admin.get("/api/v1/admin/subscribers", params={"status": "unsubscribed"}).json()
    assert [i["status"] for i in gone["items"]] == ["unsubscribed"]
    wild = admin.get("/api/v1/admin/subscribers", params={"q": "%_"}).json()["items"]
    assert wild == []  # LIKE wildcards are matched literally


def test_one_readers_history_has_consents_deliveries_bounces_and_feedback(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    made = add_readers(engine, active=1)
    run_job(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
    smtp_server.wait_for(1)
    subscriber = reader(engine, made["active"][0])
    with transaction(engine) as session:
        session.add(Consent(subscriber_id=subscriber.id or 0, action="confirm", ip="192.0.2.1"))
        session.add(Feedback(category="delivery", message="late", subscriber_id=subscriber.id))
        session.add(
            Bounce(source="smtp", kind=BounceKind.soft, subscriber_id=subscriber.id, status="4.2.2")
        )
    detail = admin.get(f"/api/v1/admin/subscribers/{subscriber.id}").json()
    assert detail["email"] == made["active"][0] and detail["status"] == "active"
    assert [c["action"] for c in detail["consents"]] == ["confirm"]
    assert [(d["column_date"], d["status"]) for d in detail["deliveries"]] == [
        (SEED_DAY.isoformat(), "sent")
    ]
    assert [b["status"] for b in detail["bounces"]] == ["4.2.2"]
    assert [f["message"] for f in detail["feedback"]] == ["late"]


def choose(client: TestClient, engine: Engine, subscriber_id: int, **chosen: str) -> None:
    """The reader saves their preferences page with `chosen`."""
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    token = ctx.links.preferences_url(subscriber_id).rsplit("/", 1)[1]
    with transaction(engine) as session:
        preferences.change(session, ctx, token=token, who=Requester(ip="192.0.2.9"), **chosen)


def test_a_readers_time_zone_cadence_and_weekday_are_shown_the_service_zone_if_none(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    admin = make_client(admin_token=TOKEN, timezone="Europe/Berlin")
    admin.headers.update(AUTH)
    ada = add_reader(engine, "ada@example.com")
    bob = add_reader(engine, "bob@example.com")
    choose(admin, engine, ada, timezone="America/Los_Angeles", cadence="weekly", digest_weekday="3")

    listed = admin.get("/api/v1/admin/subscribers").json()["items"]
    detail = admin.get(f"/api/v1/admin/subscribers/{bob}").json()

    fields = ("email", "timezone", "timezone_in_use", "cadence", "digest_weekday")
    assert [tuple(item[f] for f in fields) for item in listed] == [
        ("ada@example.com", "America/Los_Angeles", "America/Los_Angeles", "weekly", 3),
        ("bob@example.com", None, "Europe/Berlin", "daily", 7),
    ]
    assert {f: detail[f] for f in fields} == {f: listed[1][f] for f in fields}
    # The reader's to change: no admin route writes them.
    answer = admin.patch(f"/api/v1/admin/subscribers/{bob}", json={"cadence": "weekly"})
    assert answer.status_code == 405


def test_unsubscribe_resend_and_erase(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    active = add_reader(engine, "ann@example.org")
    pending = add_reader(engine, "bob@example.org", status=SubscriberStatus.pending)
    with transaction(engine) as session:  # a pending reader has a confirmation nonce
        row = session.get(Subscriber, pending)
        assert row is not None
        row.confirm_nonce = "nonce123"

    answer = admin.post(f"/api/v1/admin/subscribers/{active}/unsubscribe")
    assert answer.status_code == 200 and answer.json()["status"] == "unsubscribed"
    assert admin.post(f"/api/v1/admin/subscribers/{active}/resend-confirmation").status_code == 409
    assert admin.post(f"/api/v1/admin/subscribers/{pending}/resend-confirmation").status_code == 202
    [mail] = smtp_server.wait_for(1, to="bob@example.org")
    assert "/confirm/" in mail.data.decode("ascii", "replace")

    ctx = admin.app.state.ctx  # type: ignore[attr-defined]
    erased = admin.delete(f"/api/v1/admin/subscribers/{pending}").json()
    assert erased["status"] == "erased" and "bob" not in erased["email"]
    assert admin.delete(f"/api/v1/admin/subscribers/{pending}").status_code == 200  # twice
    with Session(engine) as session:
        assert suppression_of(session, ctx, "bob@example.org") == SuppressionReason.erased
        consents = list(session.exec(select(Consent).where(Consent.subscriber_id == pending)))
        assert all(c.ip is None and c.user_agent is None for c in consents)
        assert "erase" in [c.action for c in consents]
        assert not list(
            session.exec(select(OutboxMail).where(OutboxMail.recipient == "bob@example.org"))
        )
    assert (
        admin.get("/api/v1/admin/subscribers", params={"email": "bob@example.org"}).json()["items"]
        == []
    )


def test_an_erased_reader_leaves_no_address_in_the_ledger_bounces_or_feedback(
    admin: TestClient, engine: Engine
) -> None:
    made = add_readers(engine, active=1)
    address = made["active"][0]
    send = start_seed_send(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
    subscriber_id = reader(engine, address).id
    with transaction(engine) as session:
        session.add(
            Feedback(
                category="other",
                message=f"I am {address}",
                reply_to=address,
                subscriber_id=subscriber_id,
            )
        )
        session.add(
            Bounce(
                source="smtp",
                kind=BounceKind.soft,
                email=address,
                subscriber_id=subscriber_id,
                diagnostic=f"<{address}> full",
                raw=address.encode(),
            )
        )
    assert admin.delete(f"/api/v1/admin/subscribers/{subscriber_id}").status_code == 200
    with Session(engine) as session:
        texts = [
            *(
                d.email + d.name
                for d in session.exec(select(Delivery).where(Delivery.send_id == send.id))
            ),
            *(f"{f.message}{f.reply_to}" for f in session.exec(select(Feedback))),
            *(f"{b.email}{b.diagnostic}{b.raw!r}" for b in session.exec(select(Bounce))),
        ]
    assert texts and not any(address in text for text in texts)


# Sends


def test_pause_resume_and_cancel_a_send_through_the_api(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=5)
    send = start_seed_send(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
    base = f"/api/v1/admin/sends/{send.id}"
    shown = admin.get(base).json()
    assert (shown["status"], shown["readers"], shown["remaining"]) == ("sending", 5, 5)

    paused = admin.post(f"{base}/pause").json()
    assert paused["status"] == "paused" and paused["pause_reason"] == "paused by the operator"
    assert admin.post(f"{base}/pause").status_code == 200  # twice is fine
    resumed = admin.post(f"{base}/resume").json()
    assert resumed["status"] == "sending" and resumed["pause_reason"] is None
    cancelled = admin.post(f"{base}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    assert admin.post(f"{base}/resume").status_code == 409
    assert admin.post(f"{base}/pause").status_code == 409
    listed = admin.get("/api/v1/admin/sends").json()
    assert [s["status"] for s in listed] == ["cancelled"]

    run_job(engine, admin.app.state.ctx.settings)  # the scheduler firing changes nothing
    assert smtp_server.received == []
    with Session(engine) as session:
        assert {d.status for d in session.exec(select(Delivery))} == {"pending"}


def test_a_finished_send_cannot_be_paused_or_cancelled(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=2)
    run_job(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
    [send] = admin.get("/api/v1/admin/sends").json()
    assert send["status"] == "done" and send["sent"] == 2
    assert admin.post(f"/api/v1/admin/sends/{send['id']}/pause").status_code == 409
    assert admin.post(f"/api/v1/admin/sends/{send['id']}/cancel").status_code == 409


# Columns


def seed_column(engine: Engine, admin: TestClient) -> ColumnRecord:
    from service.delivery.daily import refresh_columns

    refresh_columns(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
    with Session(engine) as session:
        return session.exec(select(ColumnRecord)).one()


def test_preview_is_the_exact_mail_a_reader_gets_and_a_test_copy_arrives(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    column = seed_column(engine, admin)
    [listed] = admin.get("/api/v1/admin/columns").json()
    assert listed["id"] == column.id and listed["send_id"] is None
    preview = admin.get(f"/api/v1/admin/columns/{column.id}/preview").json()
    assert preview["subject"] == column.title
    assert "Syria" in preview["text"] and "<html" in preview["html"].lower()
    assert 10_000 < preview["size_bytes"] < 100_000

    answer = admin.post(
        f"/api/v1/admin/columns/{column.id}/test", json={"to": "Editor@Example.org"}
    )
    assert answer.status_code == 200 and answer.json()["sent"] is True
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["editor@example.org"] and mail.message["Subject"] == column.title
    assert (
        admin.post(
            f"/api/v1/admin/columns/{column.id}/test", json={"to": "not an address"}
        ).status_code
        == 422
    )
    with Session(engine) as session:
        assert list(session.exec(select(Send))) == []  # a test copy is no send


def test_a_cancelled_column_is_not_sent_and_a_rescheduled_one_goes_at_its_time(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=2)
    column = seed_column(engine, admin)
    cancelled = admin.patch(f"/api/v1/admin/columns/{column.id}", json={"cancelled": True}).json()
    assert cancelled["cancelled_at"] is not None
    run_job(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
    assert smtp_server.received == [] and admin.get("/api/v1/admin/sends").json() == []

    later = "2016-02-04T09:30:00+01:00"
    moved = admin.patch(f"/api/v1/admin/columns/{column.id}", json={"send_at": later}).json()
    assert moved["cancelled_at"] is None and moved["send_at"].startswith("2016-02-04T08:30")
    run_job(engine, admin.app.state.ctx.settings)  # SEND_TIME: not this column's time
    assert admin.get("/api/v1/admin/sends").json() == []

    async def heal_at(moment: dt.datetime) -> None:
        runs = dispatcher(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
        await runs.heal(moment)
        await runs.wait(None)

    asyncio.run(heal_at(dt.datetime(2016, 2, 4, 8, 29, tzinfo=dt.UTC)))
    assert admin.get("/api/v1/admin/sends").json() == []
    asyncio.run(heal_at(dt.datetime(2016, 2, 4, 8, 31, tzinfo=dt.UTC)))
    assert len(smtp_server.wait_for(2)) == 2
    assert (
        admin.patch(f"/api/v1/admin/columns/{column.id}", json={"cancelled": True}).status_code
        == 409
    )


# Digests


def test_a_weeks_digest_is_previewed_and_a_test_copy_arrives(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, [MONDAY, MONDAY + dt.timedelta(days=2), MONDAY + dt.timedelta(days=7)])
    answer = admin.get(f"/api/v1/admin/digests/{WEEK}/preview")
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["week"] == WEEK and len(preview["column_ids"]) == 2
    assert preview["subject"].endswith("your week: 23\u201325 November 2026")
    assert title(MONDAY) in preview["text"] and "<html" in preview["html"].lower()

    sent = admin.post("/api/v1/admin/digests/2026-w48/test", json={"to": "Editor@Example.org"})
    assert sent.status_code == 200 and sent.json()["sent"] is True
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["editor@example.org"]
    assert str(mail.message["Subject"]) == preview["subject"]
    with Session(engine) as session:
        assert list(session.exec(select(Send))) == []  # a test copy is no send


def test_a_week_that_is_not_one_is_422_and_one_without_a_column_404(
    admin: TestClient, engine: Engine
) -> None:
    add_columns(engine, [MONDAY])
    to = {"to": "editor@example.org"}
    for week in ("2026-48", "2025-W53", "W48"):
        assert admin.get(f"/api/v1/admin/digests/{week}/preview").status_code == 422
        assert admin.post(f"/api/v1/admin/digests/{week}/test", json=to).status_code == 422
    empty = admin.get("/api/v1/admin/digests/2026-W47/preview")
    assert empty.status_code == 404 and "no column in 2026-W47" in empty.json()["detail"]
    assert admin.post("/api/v1/admin/digests/2026-W47/test", json=to).status_code == 404
    refused = admin.post(f"/api/v1/admin/digests/{WEEK}/test", json={"to": "not an address"})
    assert refused.status_code == 422


def test_a_digest_send_is_listed_with_its_week_and_a_link_to_its_preview(
    admin: TestClient, engine: Engine
) -> None:
    settings = admin.app.state.ctx.settings  # type: ignore[attr-defined]
    add_columns(engine, [MONDAY, MONDAY + dt.timedelta(days=1)])
    add_weekly_reader(engine, "weekly@example.com", Cadence.weekly, weekday=3)
    add_readers(engine, active=1)
    with transaction(engine) as session:
        monday = session.exec(select(ColumnRecord).where(ColumnRecord.date == MONDAY)).one()
        sends.start(session, column=monday)
        assert digests.start_week(session, settings, WEEK, dt.datetime(2026, 11, 23)) is not None
    digest, column = admin.get("/api/v1/admin/sends").json()
    assert (digest["kind"], digest["week"], digest["column_id"]) == ("digest", WEEK, 0)
    assert digest["title"] == "Weekly digest, 23\u201329 November 2026"  # WEEK, as people say it
    assert digest["preview_url"] == f"/api/v1/admin/digests/{WEEK}/preview"
    assert column["preview_url"] == f"/api/v1/admin/columns/{monday.id}/preview"
    assert admin.get(digest["preview_url"]).json()["column_ids"] == [monday.id, monday.id + 1]
    assert admin.get(column["preview_url"]).json()["subject"] == monday.title
    assert admin.get(f"/api/v1/admin/sends/{digest['id']}").json()["week"] == WEEK
    for action in ("pause", "resume", "cancel"):
        answer = admin.post(f"/api/v1/admin/sends/{digest['id']}/{action}")
        assert answer.status_code == 200, (action, answer.text)
    weekly = reader(engine, "weekly@example.com")
    history = admin.get(f"/api/v1/admin/subscribers/{weekly.id}")
    assert history.status_code == 200
    assert [d["column_date"] for d in history.json()["deliveries"]] == [WEEK]
    assert [d["column_title"] for d in history.json()["deliveries"]] == [digest["title"]]


# Feedback


def test_the_feedback_inbox_filters_and_resolves(admin: TestClient, engine: Engine) -> None:
    with transaction(engine) as session:
        for category in ("delivery", "content", "delivery"):
            session.add(Feedback(category=category, message=f"about {category}"))
    inbox = admin.get("/api/v1/admin/feedback").json()
    assert [f["category"] for f in inbox] == ["delivery", "content", "delivery"]  # newest first
    first = inbox[0]["id"]
    assert admin.post(f"/api/v1/admin/feedback/{first}/resolve").json()["resolved_at"]
    open_delivery = admin.get(
        "/api/v1/admin/feedback", params={"category": "delivery", "resolved": False}
    ).json()
    assert [f["id"] for f in open_delivery] == [inbox[2]["id"]]
    assert admin.post(f"/api/v1/admin/feedback/{first}/reopen").json()["resolved_at"] is None


def test_api_and_outbox_stay_quiet_after_admin_calls(admin: TestClient, engine: Engine) -> None:
    """No admin read writes anything: the outbox stays empty after a tour of the GETs."""
    add_readers(engine, active=1)
    add_columns(engine, [MONDAY])  # WEEK's digest preview has a column to show
    for method, path in admin_routes(admin):
        if method == "GET" and "{" not in path and "/1" not in path:
            assert admin.get(path).status_code == 200, path
    assert eventually(lambda: outbox_idle(engine), timeout=5)
    with Session(engine) as session:
        assert list(session.exec(select(OutboxMail).where(col(OutboxMail.id) > 0))) == []


def test_send_now_starts_the_send_once_and_never_for_a_cancelled_column(
    admin: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=3)
    column = seed_column(engine, admin)
    admin.patch(f"/api/v1/admin/columns/{column.id}", json={"cancelled": True})
    refused = admin.post(f"/api/v1/admin/columns/{column.id}/send")
    assert refused.status_code == 409 and "cancelled" in refused.json()["detail"]
    admin.patch(f"/api/v1/admin/columns/{column.id}", json={"cancelled": False})

    started = admin.post(f"/api/v1/admin/columns/{column.id}/send")
    assert started.status_code == 201
    send = started.json()
    assert (send["status"], send["readers"], send["remaining"]) == ("sending", 3, 3)
    again = admin.post(f"/api/v1/admin/columns/{column.id}/send")
    assert again.status_code == 200 and again.json()["id"] == send["id"]

    async def heal() -> None:  # what a running worker's heal does within RESUME_INTERVAL
        runs = dispatcher(engine, admin.app.state.ctx.settings)  # type: ignore[attr-defined]
        await runs.heal(dt.datetime.now(dt.UTC))
        await runs.wait(None)

    asyncio.run(heal())
    assert sorted(smtp_server.per_recipient().values()) == [1, 1, 1]
    assert admin.get(f"/api/v1/admin/sends/{send['id']}").json()["status"] == "done"


def test_a_search_with_a_nul_byte_finds_nothing_instead_of_failing(
    admin: TestClient, engine: Engine
) -> None:
    add_readers(engine, active=1)  # PostgreSQL refuses a NUL in a query: found by schemathesis
    for params in ({"q": "g\x00"}, {"email": "active0@example.com\x00"}):
        answer = admin.get("/api/v1/admin/subscribers", params=params)
        assert answer.status_code == 200 and answer.json()["items"] == []

"""The dashboard at /admin: off (401) without a password, a sign-in with a rate limit and a
strict session cookie, a CSRF token on every form, sign-out; and each page's actions change
what the admin API's change (readers, sends, columns, feedback, imports and exports)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service import preferences
from service.config import SIGN_IN_ATTEMPTS
from service.context import AppContext, Requester
from service.db import transaction
from service.delivery import digests, sends
from service.models import (
    AdminSession,
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
from service.operators import hash_password
from service.subscriptions import suppression_of
from tests.conftest import SEED
from tests.daily import SEED_DAY, add_readers, run_job, start_seed_send
from tests.delivery.test_digest_send import MONDAY, add_columns, title
from tests.delivery.test_digest_send import add_reader as add_weekly_reader
from tests.helpers import add_reader, app_routes, eventually, outbox_idle, reader
from tests.smtp_server import SmtpTestServer

PASSWORD = "correct horse battery staple"
TOKEN_RE = re.compile(r'name="csrf" value="([^"]+)"')
# Path parameters filled in for the route walk; every action of a route with {action}.
FILLED = {
    "{subscriber_id}": "1",
    "{send_id}": "1",
    "{column_id}": "1",
    "{feedback_id}": "1",
    "{week}": "2026-W48",
}
WEEK = "2026-W48"  # MONDAY's
ACTIONS = {
    "/admin/sends/1/{action}": ("pause", "resume", "cancel"),
    "/admin/feedback/1/{action}": ("resolve", "reopen"),
}


def form_token(client: TestClient, path: str) -> str:
    """The CSRF token in the forms of the page at `path`."""
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.status_code)
    found = TOKEN_RE.search(answer.text)
    assert found, f"no form token on {path}"
    return found.group(1)


def sign_in(client: TestClient, password: str = PASSWORD, next_url: str = "/admin") -> Response:
    token = form_token(client, "/admin/sign-in")
    return client.post(
        "/admin/sign-in",
        data={"password": password, "csrf": token, "next": next_url},
        follow_redirects=False,
    )


def post(client: TestClient, path: str, **data: str) -> Response:
    """A dashboard form's POST with the session's token; the page it redirects to."""
    return client.post(path, data={"csrf": form_token(client, "/admin"), **data})


@pytest.fixture
def dashboard(make_client: Callable[..., TestClient]) -> TestClient:
    client = make_client(admin_password=PASSWORD)
    assert sign_in(client).status_code == 303
    return client


def dashboard_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) under /admin but the sign-in form, with ids filled in."""
    found = []
    for route in app_routes(client.app):
        if not isinstance(route, APIRoute) or not route.path.startswith("/admin"):
            continue
        path = route.path
        for placeholder, value in FILLED.items():
            path = path.replace(placeholder, value)
        for method in route.methods:
            found += [
                (method, path.replace("{action}", action))
                for action in ACTIONS.get(path, ("",))
                if (method, path) != ("GET", "/admin/sign-in")
            ]
    return found


def rows(engine: Engine, model: type[Any]) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model)))


# The door ---------------------------------------------------------------------------------


def test_without_a_password_every_dashboard_route_is_401_saying_how_to_set_one(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    answer = client.get("/admin")
    assert answer.status_code == 401
    assert "BROADSIDE_ADMIN_PASSWORD" in answer.text and "hash-password" in answer.text
    assert client.get("/admin/sign-in").status_code == 401
    for method, path in dashboard_routes(client):
        assert client.request(method, path).status_code == 401, (method, path)
    assert client.get("/admin/", follow_redirects=False).status_code != 404


def test_a_password_setting_that_is_no_argon2_hash_turns_the_dashboard_off_and_says_so(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_password="$argon2id$this-is-not-a-hash")
    answer = client.get("/admin")
    assert answer.status_code == 401 and "cannot be read" in answer.text


def test_every_dashboard_route_refuses_a_request_without_a_session(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(admin_password=PASSWORD)
    add_readers(engine, active=1)
    start_seed_send(engine, client.app.state.ctx.settings)  # type: ignore[attr-defined]
    with transaction(engine) as session:
        session.add(Feedback(category="other", message="hello"))
    routes = dashboard_routes(client)
    assert len(routes) >= 26 and ("GET", "/admin") in routes  # the walk found the routes
    for cookie in ({}, {"broadside_admin": "forged"}):
        client.cookies.clear()
        for name, value in cookie.items():
            client.cookies.set(name, value, path="/admin")
        for method, path in routes:
            answer = client.request(method, path, follow_redirects=False)
            if method == "GET" and not path.endswith(".json"):
                assert answer.status_code == 303, (method, path, answer.status_code)
                assert answer.headers["location"].startswith("/admin/sign-in?next=")
            else:
                assert answer.status_code in (401, 403), (method, path, answer.status_code)
    with Session(engine) as session:  # nothing was changed by any of them
        assert [s.status for s in session.exec(select(Send))] == ["sending"]
        assert [f.resolved_at for f in session.exec(select(Feedback))] == [None]
        assert session.exec(select(Subscriber)).one().status == SubscriberStatus.active


def test_a_wrong_password_is_refused_and_attempts_past_the_limit_are_429(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(admin_password=PASSWORD)
    for _ in range(SIGN_IN_ATTEMPTS):
        answer = sign_in(client, "not the password at all")
        assert answer.status_code == 401 and "not the dashboard" in answer.text
        assert "broadside_admin" not in answer.headers.get("set-cookie", "")
    refused = sign_in(client)  # even the right one, until the window has passed
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 60
    assert rows(engine, AdminSession) == []
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_signing_in_sets_a_strict_http_only_cookie_whose_token_is_stored_only_as_a_hash(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(admin_password=PASSWORD)
    answer = sign_in(client, next_url="/admin/columns")
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/columns"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if "broadside_admin=" in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # development over plain HTTP
    token = client.cookies["broadside_admin"]
    [stored] = rows(engine, AdminSession)
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest() != token
    assert client.get("/admin").status_code == 200


def test_in_production_the_session_cookie_is_secure(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_password=PASSWORD, env="production")
    client.base_url = "https://news.example.com"  # type: ignore[assignment]  # Secure cookies
    cookie = next(
        c for c in sign_in(client).headers.get_list("set-cookie") if "broadside_admin=" in c
    )
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_an_argon2_hash_as_the_setting_signs_in_with_its_password(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_password=hash_password(PASSWORD))
    assert sign_in(client, "the hash is not the password").status_code == 401
    assert sign_in(client).status_code == 303
    assert client.get("/admin").status_code == 200


def test_after_signing_in_only_a_dashboard_path_is_followed(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_password=PASSWORD)
    for elsewhere in ("https://evil.example/", "//evil.example/admin", "/admin//evil.example"):
        client.cookies.clear()
        assert sign_in(client, next_url=elsewhere).headers["location"] == "/admin"


def test_a_sign_in_without_its_form_token_is_refused(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(admin_password=PASSWORD)
    answer = client.post("/admin/sign-in", data={"password": PASSWORD, "csrf": "guessed"})
    assert answer.status_code == 403 and rows(engine, AdminSession) == []


def test_a_form_without_its_csrf_token_is_403_and_changes_nothing(
    dashboard: TestClient, make_client: Callable[..., TestClient], engine: Engine
) -> None:
    subscriber_id = add_reader(engine, "ann@example.org")
    other = make_client(admin_password=PASSWORD)  # another operator's session and token
    sign_in(other)
    path = f"/admin/subscribers/{subscriber_id}/unsubscribe"
    for data in ({}, {"csrf": ""}, {"csrf": "wrong"}, {"csrf": form_token(other, "/admin")}):
        assert dashboard.post(path, data=data).status_code == 403, data
    assert reader(engine, "ann@example.org").status == SubscriberStatus.active
    assert post(dashboard, path).status_code == 200
    assert reader(engine, "ann@example.org").status == SubscriberStatus.unsubscribed


def test_signing_out_ends_the_session_for_good(dashboard: TestClient, engine: Engine) -> None:
    token = dashboard.cookies["broadside_admin"]
    answer = post(dashboard, "/admin/sign-out")
    assert answer.url.path == "/admin/sign-in" and rows(engine, AdminSession) == []
    dashboard.cookies.set("broadside_admin", token, path="/admin")  # the old cookie, replayed
    assert dashboard.get("/admin", follow_redirects=False).status_code == 303
    assert dashboard.get("/admin/sends/1/live.json").status_code == 401


def test_an_expired_session_opens_nothing(dashboard: TestClient, engine: Engine) -> None:
    with transaction(engine) as session:
        for row in session.exec(select(AdminSession)):
            row.expires_at = row.created_at
            session.add(row)
    assert dashboard.get("/admin", follow_redirects=False).status_code == 303


# Readers ----------------------------------------------------------------------------------


def test_unsubscribe_resend_and_erase_change_what_the_api_changes(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    active = add_reader(engine, "ann@example.org")
    pending = add_reader(engine, "bob@example.org", status=SubscriberStatus.pending)
    with transaction(engine) as session:
        row = session.get(Subscriber, pending)
        assert row is not None
        row.confirm_nonce = "nonce123"

    page = post(dashboard, f"/admin/subscribers/{active}/unsubscribe")
    assert "Unsubscribed" in page.text and "ann@example.org" in page.text
    assert reader(engine, "ann@example.org").status == SubscriberStatus.unsubscribed
    refused = post(dashboard, f"/admin/subscribers/{active}/resend-confirmation")
    assert "not pending" in refused.text
    post(dashboard, f"/admin/subscribers/{pending}/resend-confirmation")
    [mail] = smtp_server.wait_for(1, to="bob@example.org")
    assert "/confirm/" in mail.data.decode("ascii", "replace")

    kept = post(dashboard, f"/admin/subscribers/{pending}/erase")  # the box not ticked
    assert "Nothing erased" in kept.text
    assert reader(engine, "bob@example.org").status == SubscriberStatus.pending
    post(dashboard, f"/admin/subscribers/{pending}/erase", confirm="yes")
    ctx = dashboard.app.state.ctx  # type: ignore[attr-defined]
    with Session(engine) as session:
        erased = session.get(Subscriber, pending)
        assert erased is not None and erased.status == SubscriberStatus.erased
        assert suppression_of(session, ctx, "bob@example.org") == SuppressionReason.erased
        actions = {
            (c.action, c.source)
            for c in session.exec(select(Consent).where(col(Consent.subscriber_id) > 0))
        }
    assert {("admin-unsubscribe", "dashboard"), ("erase", "dashboard")} <= actions


def test_readers_are_searched_and_paged_and_one_readers_history_is_shown(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=55, pending=2)
    run_job(engine, dashboard.app.state.ctx.settings)  # type: ignore[attr-defined]
    first = dashboard.get("/admin/subscribers")
    assert first.text.count("@example.com</a>") == 50 and "after=" in first.text
    after = re.search(r"after=(\d+)", first.text)
    assert after is not None
    rest = dashboard.get(f"/admin/subscribers?after={after.group(1)}")
    assert rest.text.count("@example.com</a>") == 7
    found = dashboard.get("/admin/subscribers", params={"q": "pending", "status": ""})
    assert found.text.count("@example.com</a>") == 2
    one = dashboard.get("/admin/subscribers", params={"status": "active", "q": "active17"})
    assert one.text.count("@example.com</a>") == 1 and "active17@example.com" in one.text

    history = dashboard.get(f"/admin/subscribers/{reader(engine, 'active5@example.com').id}")
    assert history.status_code == 200
    assert SEED_DAY.isoformat() in history.text and ">sent<" in history.text
    assert dashboard.get("/admin/subscribers/999999").status_code == 404


def test_a_readers_page_shows_their_time_zone_cadence_and_digest_day_without_a_form(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(admin_password=PASSWORD, timezone="Europe/Berlin")
    assert sign_in(client).status_code == 303
    ada = add_reader(engine, "ada@example.com")
    bob = add_reader(engine, "bob@example.com")
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    token = ctx.links.preferences_url(ada).rsplit("/", 1)[1]
    with transaction(engine) as session:
        chosen = {"timezone": "America/Los_Angeles", "cadence": "weekly", "digest_weekday": "3"}
        preferences.change(session, ctx, token=token, who=Requester(ip="192.0.2.9"), **chosen)

    weekly = client.get(f"/admin/subscribers/{ada}").text
    daily = client.get(f"/admin/subscribers/{bob}").text

    assert "<dd>America/Los_Angeles</dd>" in weekly and "<dd>weekly digest</dd>" in weekly
    assert "<dd>Wednesday</dd>" in weekly
    assert "<dd>service default (Europe/Berlin)</dd>" in daily and "<dd>daily column</dd>" in daily
    assert "<dd>Sunday (if they choose the weekly digest)</dd>" in daily
    assert 'name="cadence"' not in weekly and 'name="timezone"' not in weekly  # shown, not edited


def test_a_csv_upload_with_choices_names_a_bad_zone_and_the_readers_who_kept_theirs(
    dashboard: TestClient, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    with transaction(engine) as session:
        ada = session.exec(select(Subscriber).where(Subscriber.email == "ada@example.com")).one()
        ada.timezone = "Asia/Tokyo"  # her own choice, from her preferences page
        session.add(ada)
    csv = b"email,timezone,cadence\nada@example.com,Europe/Berlin,\nbo@example.org,Mars/Base,\n"
    token = form_token(dashboard, "/admin/subscribers/import")

    page = dashboard.post(
        "/admin/subscribers/import",
        data={"csrf": token},
        files={"file": ("list.csv", csv, "text/csv")},
    )

    assert page.status_code == 200 and "1 invalid" in page.text
    assert "<td>Mars/Base</td><td>timezone: not a time zone we know" in page.text
    assert "1 already there kept their own time zone, cadence or digest weekday" in page.text
    assert reader(engine, "ada@example.com").timezone == "Asia/Tokyo"


def test_a_csv_upload_imports_readers_and_the_export_downloads_them(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    csv = b"email,name,city\nnew1@example.org,Nia,Oslo\nNEW2@example.org,,\nnot-an-address,,\n"
    token = form_token(dashboard, "/admin/subscribers/import")
    page = dashboard.post(
        "/admin/subscribers/import",
        data={"csrf": token},
        files={"file": ("list.csv", csv, "text/csv")},
    )
    assert page.status_code == 200
    assert "3 rows read" in page.text and "2 new readers" in page.text and "city" in page.text
    assert reader(engine, "new2@example.org").status == SubscriberStatus.pending
    smtp_server.wait_for(2)  # each new pending reader is asked to confirm
    assert eventually(lambda: outbox_idle(engine), timeout=5)

    vouched = dashboard.post(
        "/admin/subscribers/import",
        data={"csrf": token, "confirmed": "yes"},
        files={"file": ("list.csv", csv, "text/csv")},
    )
    assert vouched.status_code == 422 and "consent source" in vouched.text
    assert reader(engine, "new1@example.org").status == SubscriberStatus.pending

    export = dashboard.get("/admin/subscribers/export", params={"format": "csv"})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    assert export.text.splitlines()[0] == (
        "email,name,status,created_at,confirmed_at,timezone,cadence,digest_weekday"
    )
    assert {line.split(",")[0] for line in export.text.splitlines()[1:]} == {
        "new1@example.org",
        "new2@example.org",
    }
    as_json = dashboard.get("/admin/subscribers/export", params={"format": "json"})
    assert [r["email"] for r in as_json.json()] == ["new1@example.org", "new2@example.org"]


# Sends ------------------------------------------------------------------------------------


def test_pause_resume_and_cancel_change_what_the_api_changes(
    dashboard: TestClient, engine: Engine
) -> None:
    add_readers(engine, active=4)
    send = start_seed_send(engine, dashboard.app.state.ctx.settings)  # type: ignore[attr-defined]

    def live() -> dict[str, Any]:
        answer = dashboard.get(f"/admin/sends/{send.id}/live.json")
        assert answer.status_code == 200
        return dict(answer.json())

    assert (live()["status"], live()["readers"], live()["remaining"]) == ("sending", 4, 4)
    post(dashboard, f"/admin/sends/{send.id}/pause")
    assert (live()["status"], live()["pause_reason"]) == ("paused", "paused by the operator")
    post(dashboard, f"/admin/sends/{send.id}/resume")
    assert (live()["status"], live()["pause_reason"]) == ("sending", "")
    page = post(dashboard, f"/admin/sends/{send.id}/cancel", back="/admin")
    assert page.url.path == "/admin" and "Cancelled" in page.text
    refused = post(dashboard, f"/admin/sends/{send.id}/resume")
    assert "only a paused send resumes" in refused.text and live()["status"] == "cancelled"
    assert {d.status for d in rows(engine, Delivery)} == {"pending"}
    assert dashboard.get("/admin/sends/999999/live.json").status_code == 404


def test_the_live_counts_and_the_overview_follow_a_finished_send(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=3, pending=1, unsubscribed=2)
    run_job(engine, dashboard.app.state.ctx.settings)  # type: ignore[attr-defined]
    [send] = rows(engine, Send)
    counts = dashboard.get(f"/admin/sends/{send.id}/live.json").json()
    assert (counts["status"], counts["sent"], counts["remaining"]) == ("done", 3, 0)
    overview = dashboard.get("/admin").text
    assert f'data-live="/admin/sends/{send.id}/live.json"' in overview
    assert re.search(r"status=active\">active</a></td><td class=\"num\">3<", overview)
    assert re.search(r"status=unsubscribed\">unsubscribed</a></td><td class=\"num\">2<", overview)
    assert overview.count("<svg") == 4 and "3 column mails sent" in overview
    assert 'src="/static/admin.js"' in overview and "<script>" not in overview
    assert dashboard.get("/static/admin.js").status_code == 200
    listing = dashboard.get("/admin/sends").text
    assert f'href="/admin/sends/{send.id}"' in listing


# Columns ----------------------------------------------------------------------------------


def upload_seed(client: TestClient, **data: str) -> Response:
    token = form_token(client, "/admin/columns")
    return client.post(
        "/admin/columns",
        data={"csrf": token, "format": "worldview", **data},
        files={"file": (SEED.name, SEED.read_bytes(), "text/plain")},
    )


def test_a_column_is_uploaded_previewed_and_test_copied(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    page = upload_seed(dashboard)
    [column] = rows(engine, ColumnRecord)
    assert page.url.path == f"/admin/columns/{column.id}" and "created" in page.text
    assert column.date == SEED_DAY and column.source_name == SEED.name
    assert column.title in page.text and "srcdoc=" in page.text and "Syria" in page.text
    assert "unchanged" in upload_seed(dashboard).text  # the same column again

    sent = post(dashboard, f"/admin/columns/{column.id}/test", to="Editor@Example.org")
    assert "Test copy sent to editor@example.org" in sent.text
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["editor@example.org"] and mail.message["Subject"] == column.title
    refused = post(dashboard, f"/admin/columns/{column.id}/test", to="not an address")
    assert "No test copy sent" in refused.text
    assert rows(engine, Send) == []  # a test copy is no send


def test_a_column_that_cannot_be_stored_is_refused_with_the_reason(
    dashboard: TestClient, engine: Engine
) -> None:
    token = form_token(dashboard, "/admin/columns")
    for files, reason in (
        ({"file": ("x-2016-02-04.txt", b"\xff\xfe bad", "text/plain")}, "not UTF-8"),
        ({"file": ("notes.txt", SEED.read_bytes(), "text/plain")}, "no date"),
        ({}, "choose a file"),
    ):
        answer = dashboard.post("/admin/columns", data={"csrf": token}, files=files)
        assert answer.status_code == 422 and reason in answer.text, reason
    assert rows(engine, ColumnRecord) == []


def test_a_column_is_rescheduled_in_timezone_cancelled_and_locked_once_sending(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(admin_password=PASSWORD, timezone="Europe/Berlin")
    sign_in(client)
    upload_seed(client)
    [column] = rows(engine, ColumnRecord)
    path = f"/admin/columns/{column.id}/schedule"

    post(client, path, action="at", send_at="2016-02-04T09:30")
    [moved] = rows(engine, ColumnRecord)
    assert moved.send_at is not None and moved.send_at.isoformat() == "2016-02-04T08:30:00"
    post(client, path, action="cancel")
    [cancelled] = rows(engine, ColumnRecord)
    assert cancelled.cancelled_at is not None and cancelled.send_at is None
    refused = post(client, f"/admin/columns/{column.id}/send")
    assert "cancelled" in refused.text and rows(engine, Send) == []
    post(client, path, action="default")
    [back] = rows(engine, ColumnRecord)
    assert back.cancelled_at is None and back.send_at is None

    post(client, f"/admin/columns/{column.id}/send")
    locked = post(client, path, action="cancel")
    assert "can no longer be rescheduled" in locked.text
    [still] = rows(engine, ColumnRecord)
    assert still.cancelled_at is None


def test_send_now_snapshots_the_active_readers_once(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_readers(engine, active=3, pending=1)
    upload_seed(dashboard)
    [column] = rows(engine, ColumnRecord)
    page = post(dashboard, f"/admin/columns/{column.id}/send")
    [send] = rows(engine, Send)
    assert page.url.path == f"/admin/sends/{send.id}" and "Send started for 3 readers" in page.text
    assert send.total == 3 and len(rows(engine, Delivery)) == 3
    again = post(dashboard, f"/admin/columns/{column.id}/send")
    assert "already started" in again.text and len(rows(engine, Send)) == 1
    assert smtp_server.received == []  # the running processes' heal delivers it, not the page


# Digests ----------------------------------------------------------------------------------


def test_a_weeks_digest_is_previewed_and_test_copied(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, [MONDAY, MONDAY + dt.timedelta(days=2)])
    picked = dashboard.get("/admin/digests", params={"week": "2026-w48"})  # the week picker
    assert picked.status_code == 200 and picked.url.path == f"/admin/digests/{WEEK}"
    page = picked.text
    assert f"Digest, week {WEEK}" in page and "Monday 2026-11-23 to Sunday 2026-11-29" in page
    assert "srcdoc=" in page and "The digest as a weekly reader sees it" in page
    assert page.count(title(MONDAY)) >= 2  # listed, and in the preview
    assert "without any reader's history" in page

    sent = post(dashboard, f"/admin/digests/{WEEK}/test", to="Editor@Example.org")
    assert "Test copy sent to editor@example.org" in sent.text
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["editor@example.org"]
    assert str(mail.message["Message-ID"]).startswith(f"<digest.{WEEK}.preview-")
    refused = post(dashboard, f"/admin/digests/{WEEK}/test", to="not an address")
    assert "No test copy sent" in refused.text
    assert rows(engine, Send) == [] and rows(engine, Delivery) == []  # a test copy is no send


def test_a_week_that_is_not_one_or_has_no_column_is_a_4xx_page_with_the_week_picker(
    dashboard: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    add_columns(engine, [MONDAY])
    for answer in (dashboard.get("/admin/digests/2026-48"), dashboard.get("/admin/digests?week=x")):
        assert answer.status_code == 422
        assert "is not an ISO week like 2026-W48" in answer.text and 'type="week"' in answer.text
    empty = dashboard.get("/admin/digests/2026-W47")
    assert empty.status_code == 404 and "There is no column in 2026-W47" in empty.text
    assert 'type="week"' in empty.text
    refused = post(dashboard, "/admin/digests/2026-W47/test", to="editor@example.org")
    assert "No test copy sent: no column in 2026-W47" in refused.text
    assert smtp_server.received == []
    this_week = dashboard.get("/admin/digests", follow_redirects=False)
    assert this_week.status_code == 303
    assert re.fullmatch(r"/admin/digests/\d{4}-W\d{2}", this_week.headers["location"])


def test_a_digest_send_shows_as_its_week_linking_to_its_preview_on_every_page(
    dashboard: TestClient, engine: Engine
) -> None:
    settings = dashboard.app.state.ctx.settings  # type: ignore[attr-defined]
    add_columns(engine, [MONDAY])
    add_weekly_reader(engine, "weekly@example.com", Cadence.weekly, weekday=3)
    add_readers(engine, active=1)
    with transaction(engine) as session:
        monday = session.exec(select(ColumnRecord)).one()
        sends.start(session, column=monday)
        started = digests.start_week(session, settings, WEEK, dt.datetime(2026, 11, 23))
        assert started is not None
        digest = started[0]
    digest_link = f'<a href="/admin/digests/{WEEK}">Digest, week {WEEK}</a>'
    column_link = f'<a href="/admin/columns/{monday.id}">2026-11-23 · {monday.title}</a>'

    listing = dashboard.get("/admin/sends")
    assert listing.status_code == 200
    assert digest_link in listing.text and column_link in listing.text
    assert f'href="/admin/sends/{digest.id}"' in listing.text
    overview = dashboard.get("/admin")  # the latest send is the digest's
    assert overview.status_code == 200 and digest_link in overview.text
    for action in ("pause", "resume", "cancel"):
        page = post(dashboard, f"/admin/sends/{digest.id}/{action}")
        assert page.status_code == 200 and page.url.path == f"/admin/sends/{digest.id}"
        assert digest_link in page.text
    assert dashboard.get(f"/admin/sends/{digest.id}/live.json").json()["status"] == "cancelled"
    weekly = reader(engine, "weekly@example.com")
    history = dashboard.get(f"/admin/subscribers/{weekly.id}")
    assert history.status_code == 200 and f'href="/admin/sends/{digest.id}"' in history.text
    preview = dashboard.get(f"/admin/digests/{WEEK}")  # where the link goes
    assert preview.status_code == 200
    assert f'<a href="/admin/sends/{digest.id}">send {digest.id}, cancelled</a>' in preview.text


# Feedback ---------------------------------------------------------------------------------


def test_the_feedback_inbox_resolves_and_reopens(dashboard: TestClient, engine: Engine) -> None:
    with transaction(engine) as session:
        session.add(Feedback(category="delivery", message="The mail came <late>"))
        session.add(Feedback(category="content", message="Fine column"))
    inbox = dashboard.get("/admin/feedback").text
    assert "The mail came &lt;late&gt;" in inbox and "Fine column" in inbox
    delivery = next(f for f in rows(engine, Feedback) if f.category == "delivery")
    post(dashboard, f"/admin/feedback/{delivery.id}/resolve", back="/admin/feedback?state=open")
    assert next(f for f in rows(engine, Feedback) if f.id == delivery.id).resolved_at
    still_open = dashboard.get("/admin/feedback?state=open").text
    assert "came &lt;late" not in still_open and "Fine column" in still_open
    assert "came &lt;late" in dashboard.get("/admin/feedback?state=resolved").text
    post(dashboard, f"/admin/feedback/{delivery.id}/reopen")
    assert next(f for f in rows(engine, Feedback) if f.id == delivery.id).resolved_at is None


def test_dashboard_pages_write_nothing(dashboard: TestClient, engine: Engine) -> None:
    """A tour of every page queues no mail and changes no reader."""
    add_readers(engine, active=2, pending=1)
    start_seed_send(engine, dashboard.app.state.ctx.settings)  # type: ignore[attr-defined]
    before = [(s.id, s.status, s.updated_at) for s in rows(engine, Subscriber)]
    for method, path in dashboard_routes(dashboard):
        if method == "GET":
            assert dashboard.get(path).status_code in (200, 404), path
    assert [(s.id, s.status, s.updated_at) for s in rows(engine, Subscriber)] == before
    with Session(engine) as session:
        assert list(session.exec(select(OutboxMail))) == []

"""The reader's preferences page over HTTP: what a GET shows, what a POST saves (with its
consent records), the data download and the erasure, and the time zone and cadence a new
reader brings through the subscribe form and the API."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service import clock
from service.context import AppContext
from service.db import transaction
from service.models import (
    Cadence,
    ColumnRecord,
    Consent,
    Delivery,
    MailStatus,
    Send,
    Subscriber,
    SubscriberStatus,
)
from service.subscriptions import suppression_of
from service.tokens import Purpose
from tests.helpers import add_reader, links, path_of, reader
from tests.smtp_server import SmtpTestServer

READER = "reader@example.com"
STRANGER_ZONE = "Asia/Tokyo"


def ctx_of(client: TestClient) -> AppContext:
    return client.app.state.ctx  # type: ignore[attr-defined,no-any-return]


def preferences_path(client: TestClient, subscriber_id: int) -> str:
    return path_of(ctx_of(client).links.preferences_url(subscriber_id))


def consent_actions(engine: Engine, subscriber_id: int) -> list[str]:
    with Session(engine) as session:
        found = (
            select(Consent).where(Consent.subscriber_id == subscriber_id).order_by(col(Consent.id))
        )
        return [c.action for c in session.exec(found)]


def set_zone(engine: Engine, email: str, zone: str | None, cadence: Cadence) -> None:
    with transaction(engine) as session:
        subscriber = session.exec(select(Subscriber).where(Subscriber.email == email)).one()
        subscriber.timezone, subscriber.cadence = zone, cadence
        session.add(subscriber)


def add_delivery(
    engine: Engine,
    subscriber_id: int,
    day: dt.date,
    *,
    status: MailStatus = MailStatus.sent,
    title: str = "The world today",
) -> int:
    """One column of `day`, its send, and this reader's row in its ledger (due at 06:00 UTC)."""
    due = dt.datetime.combine(day, dt.time(6))
    with transaction(engine) as session:
        column = ColumnRecord(
            date=day,
            slug=f"world-view-{day}",
            title=title,
            source_text="text",
            source_format="markdown",
            content_hash=f"{day}",
        )
        session.add(column)
        session.flush()
        send = Send(column_id=column.id)
        session.add(send)
        session.flush()
        assert send.id is not None
        delivery = Delivery(
            send_id=send.id,
            subscriber_id=subscriber_id,
            email=READER,
            status=status,
            attempts=1 if status == MailStatus.sent else 0,
            sent_at=due if status == MailStatus.sent else None,
            due_at=due,
            next_attempt_at=due,
            zone="UTC",
        )
        session.add(delivery)
        session.flush()
        assert delivery.id is not None
        return delivery.id


def delivery_due(engine: Engine, delivery_id: int) -> tuple[dt.datetime | None, str | None]:
    with Session(engine) as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        return row.due_at, row.zone


# The page -----------------------------------------------------------------------------------


def test_get_and_head_on_the_preferences_link_change_nothing(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    path = preferences_path(app_client, subscriber_id)

    page = app_client.get(path)
    assert app_client.head(path).status_code == 200

    assert page.status_code == 200 and READER in page.text
    assert "<option selected>UTC</option>" in page.text  # the service's TIMEZONE
    assert "Your next column:" in page.text and "06:00 (UTC)" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert consent_actions(engine, subscriber_id) == []
    before = reader(engine, READER)
    assert (before.timezone, before.cadence, before.name) == (None, Cadence.daily, "Ada")


def test_saving_changes_cadence_weekday_zone_and_name_with_a_consent_record_each(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    form = {
        "cadence": "weekly",
        "digest_weekday": "5",
        "timezone": "Europe/Berlin",
        "name": "Nia",
    }

    saved = app_client.post(preferences_path(app_client, subscriber_id), data=form)

    assert saved.status_code == 200 and "Saved." in saved.text
    assert "Your next weekly digest: <strong>Friday " in saved.text
    assert ", 06:00 (Europe/Berlin)" in saved.text
    after = reader(engine, READER)
    assert (after.cadence, after.digest_weekday, after.timezone, after.name) == (
        Cadence.weekly,
        5,
        "Europe/Berlin",
        "Nia",
    )
    assert consent_actions(engine, subscriber_id) == [
        "preferences:cadence=weekly",
        "preferences:weekday=5",
        "preferences:timezone",
        "preferences:name",
    ]


def test_with_fixed_timing_the_page_shows_the_services_moment(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(delivery_timing="fixed", timezone="Europe/Berlin")
    subscriber_id = add_reader(engine, READER)
    set_zone(engine, READER, "Asia/Tokyo", Cadence.daily)

    page = client.get(preferences_path(client, subscriber_id))

    assert "06:00 (Europe/Berlin)" in page.text
    assert "to every reader at the same moment, 06:00 in Europe/Berlin" in page.text
    assert "<option selected>Asia/Tokyo</option>" in page.text


def test_saving_the_same_choices_records_nothing(app_client: TestClient, engine: Engine) -> None:
    subscriber_id = add_reader(engine, READER)
    same = {"cadence": "daily", "digest_weekday": "7", "timezone": "UTC", "name": "Ada"}

    saved = app_client.post(preferences_path(app_client, subscriber_id), data=same)

    assert saved.status_code == 200
    assert reader(engine, READER).timezone is None, "still following the service's zone"
    assert consent_actions(engine, subscriber_id) == []


def test_an_unknown_zone_is_a_clear_422_and_changes_nothing(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    form = {"cadence": "weekly", "timezone": "Mars/Olympus_Mons", "name": "Nia"}

    refused = app_client.post(preferences_path(app_client, subscriber_id), data=form)

    assert refused.status_code == 422
    assert "We do not know that time zone" in refused.text
    after = reader(engine, READER)
    assert (after.cadence, after.timezone, after.name) == (Cadence.daily, None, "Ada")
    assert consent_actions(engine, subscriber_id) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cadence", "hourly", "Choose a daily column or a weekly digest."),
        ("digest_weekday", "8", "Choose a day of the week for the digest."),
        ("name", "Ada\r\nBcc: x@example.com", "line breaks"),
    ],
)
def test_a_bad_field_is_a_422_naming_it(
    field: str, value: str, message: str, app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)

    refused = app_client.post(preferences_path(app_client, subscriber_id), data={field: value})

    assert refused.status_code == 422 and message in refused.text
    assert consent_actions(engine, subscriber_id) == []


def test_an_unsubscribe_token_does_not_open_the_preferences(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    unsubscribe_token = ctx_of(app_client).links.unsubscribe_url(subscriber_id).rsplit("/", 1)[1]

    shown = app_client.get(f"/preferences/{unsubscribe_token}")
    posted = app_client.post(f"/preferences/{unsubscribe_token}", data={"name": "Mallory"})

    assert shown.status_code == 400 and "This link is not valid" in shown.text
    assert posted.status_code == 400 and reader(engine, READER).name == "Ada"
    preferences_token = preferences_path(app_client, subscriber_id).rsplit("/", 1)[1]
    assert app_client.post(f"/unsubscribe/{preferences_token}").status_code == 400
    assert reader(engine, READER).status == SubscriberStatus.active


def test_an_expired_or_altered_link_is_refused(app_client: TestClient, engine: Engine) -> None:
    subscriber_id = add_reader(engine, READER)
    expired = ctx_of(app_client).tokens.make(
        Purpose.preferences, str(subscriber_id), int(time.time()) - 60
    )
    altered = preferences_path(app_client, subscriber_id)[:-2] + "xx"

    old = app_client.post(f"/preferences/{expired}", data={"name": "Nia"})

    assert old.status_code == 410 and "This link has expired" in old.text
    assert "Get a new link" in old.text
    assert app_client.get(altered).status_code == 400
    assert app_client.post(f"/preferences/{expired}/data").status_code == 410
    assert reader(engine, READER).name == "Ada"


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (SubscriberStatus.pending, "waiting for its confirmation"),
        (SubscriberStatus.unsubscribed, "not subscribed any more"),
    ],
)
def test_only_an_active_reader_changes_anything(
    status: SubscriberStatus, says: str, app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER, status=status)
    path = preferences_path(app_client, subscriber_id)

    shown = app_client.get(path)
    refused = app_client.post(path, data={"cadence": "weekly", "name": "Nia"})

    assert shown.status_code == 200 and says in shown.text
    assert refused.status_code == 409 and says in refused.text
    after = reader(engine, READER)
    assert (after.cadence, after.name) == (Cadence.daily, "Ada")


def test_the_page_offers_unsubscribing_through_the_existing_flow(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    page = app_client.get(preferences_path(app_client, subscriber_id))
    [link] = [u for u in page.text.split('"') if "/unsubscribe/" in u]

    assert app_client.get(path_of(link)).status_code == 200
    assert app_client.post(path_of(link)).status_code == 200
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed


def test_a_post_from_another_site_is_refused(app_client: TestClient, engine: Engine) -> None:
    subscriber_id = add_reader(engine, READER)
    path = preferences_path(app_client, subscriber_id)

    for suffix, data in (("", {"name": "Mallory"}), ("/erase", {"confirm": "erase"})):
        refused = app_client.post(
            path + suffix, data=data, headers={"Origin": "https://evil.example"}
        )
        assert refused.status_code == 403
    assert reader(engine, READER).name == "Ada"


@pytest.mark.parametrize(
    "value",
    ["<script>alert(1)</script>", "{{ 7*7 }}", "Europe/Berlin\r\nBcc: x@example.com", "x" * 5000],
    ids=["markup", "template", "crlf", "long"],
)
def test_hostile_text_in_any_field_is_refused_inertly(
    value: str, app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    path = preferences_path(app_client, subscriber_id)

    for field in ("cadence", "digest_weekday", "timezone"):
        answer = app_client.post(path, data={field: value})
        assert answer.status_code == 422
        assert "<script>" not in answer.text
    subscribed = app_client.post("/subscribe", data={"email": "new@example.com", "timezone": value})

    assert subscribed.status_code == 200 and reader(engine, "new@example.com").timezone is None
    assert consent_actions(engine, subscriber_id) == []


# Re-timing ----------------------------------------------------------------------------------


def test_a_new_zone_moves_the_readers_waiting_column_to_their_morning(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    day = clock.now().date() + dt.timedelta(days=2)
    waiting = add_delivery(engine, subscriber_id, day, status=MailStatus.pending)

    app_client.post(preferences_path(app_client, subscriber_id), data={"timezone": "Asia/Tokyo"})

    # 06:00 in Tokyo (UTC+9, no daylight saving) is 21:00 UTC the day before.
    assert delivery_due(engine, waiting) == (
        dt.datetime.combine(day - dt.timedelta(days=1), dt.time(21)),
        "Asia/Tokyo",
    )


def test_a_name_change_leaves_the_ledger_alone(app_client: TestClient, engine: Engine) -> None:
    subscriber_id = add_reader(engine, READER)
    day = clock.now().date() + dt.timedelta(days=2)
    waiting = add_delivery(engine, subscriber_id, day, status=MailStatus.pending)

    app_client.post(preferences_path(app_client, subscriber_id), data={"name": "Nia"})

    assert delivery_due(engine, waiting) == (dt.datetime.combine(day, dt.time(6)), "UTC")


# The data download and erasure --------------------------------------------------------------


def send_feedback(client: TestClient, subscriber_id: int, message: str) -> None:
    token = parse_qs(urlsplit(ctx_of(client).links.feedback_url(subscriber_id)).query)["t"][0]
    sent = client.post("/feedback", data={"category": "delivery", "message": message, "t": token})
    assert sent.status_code == 200


def test_the_data_download_holds_the_record_consents_deliveries_and_feedback(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    path = preferences_path(app_client, subscriber_id)
    app_client.post(path, data={"timezone": "Europe/Berlin"})
    add_delivery(engine, subscriber_id, dt.date(2016, 2, 4), title="Ice and fire")
    send_feedback(app_client, subscriber_id, "The column came at midnight.")

    download = app_client.post(f"{path}/data")

    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/json")
    assert download.headers["content-disposition"] == 'attachment; filename="my-data.json"'
    assert download.headers["cache-control"] == "no-store"
    data = json.loads(download.content)
    record = data["subscriber"]
    assert (record["email"], record["name"], record["status"]) == (READER, "Ada", "active")
    assert (record["timezone"], record["cadence"], record["digest_weekday"]) == (
        "Europe/Berlin",
        "daily",
        7,
    )
    assert record["created_at"].endswith("Z")
    assert [c["action"] for c in data["consents"]] == ["preferences:timezone"]
    [delivery] = data["deliveries"]
    assert delivery["column_date"] == "2016-02-04" and delivery["column_title"] == "Ice and fire"
    assert delivery["status"] == "sent" and delivery["sent_at"] == "2016-02-04T06:00:00Z"
    [feedback] = data["feedback"]
    assert feedback["message"] == "The column came at midnight."
    assert app_client.get(f"{path}/data").status_code == 405, "only the page's button downloads"


def test_erasure_needs_its_confirmation_box(app_client: TestClient, engine: Engine) -> None:
    subscriber_id = add_reader(engine, READER)

    refused = app_client.post(f"{preferences_path(app_client, subscriber_id)}/erase")

    assert refused.status_code == 422 and "Tick the box" in refused.text
    assert reader(engine, READER).status == SubscriberStatus.active


def test_erasure_removes_the_personal_data_and_suppresses_the_address(
    app_client: TestClient, engine: Engine
) -> None:
    subscriber_id = add_reader(engine, READER)
    path = preferences_path(app_client, subscriber_id)
    send_feedback(app_client, subscriber_id, "Please stop.")

    erased = app_client.post(f"{path}/erase", data={"confirm": "erase"})

    assert erased.status_code == 200 and "Your data is erased" in erased.text
    with Session(engine) as session:
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        assert subscriber.status == SubscriberStatus.erased
        assert READER not in subscriber.email and subscriber.name == ""
        assert suppression_of(session, ctx_of(app_client), READER) is not None
    assert consent_actions(engine, subscriber_id)[-1] == "erase"
    after = app_client.get(path)
    assert after.status_code == 200 and "has been erased" in after.text
    assert READER not in after.text
    assert app_client.post(f"{path}/data").status_code == 410
    assert app_client.post(path, data={"name": "Ada"}).status_code == 410


# Intake: the subscribe form and the API ------------------------------------------------------


def test_the_form_keeps_a_new_readers_browser_zone_and_cadence(
    app_client: TestClient, engine: Engine
) -> None:
    form = {"email": READER, "timezone": STRANGER_ZONE, "cadence": "weekly"}

    assert app_client.post("/subscribe", data=form).status_code == 200

    new = reader(engine, READER)
    assert (new.timezone, new.cadence, new.digest_weekday) == (STRANGER_ZONE, Cadence.weekly, 7)


@pytest.mark.parametrize("zone", ["", "Mars/Olympus_Mons", "x" * 300])
def test_a_missing_or_unknown_zone_falls_back_to_the_services(
    zone: str, app_client: TestClient, engine: Engine
) -> None:
    assert (
        app_client.post("/subscribe", data={"email": READER, "timezone": zone}).status_code == 200
    )

    new = reader(engine, READER)
    assert (new.timezone, new.cadence) == (None, Cadence.daily)


def test_the_api_keeps_a_new_readers_zone_cadence_and_weekday(
    app_client: TestClient, engine: Engine
) -> None:
    body = {
        "email": READER,
        "timezone": "america/los_angeles",
        "cadence": "weekly",
        "digest_weekday": 3,
    }

    assert app_client.post("/api/v1/subscriptions", json=body).status_code == 202

    new = reader(engine, READER)
    assert (new.timezone, new.cadence, new.digest_weekday) == (
        "America/Los_Angeles",
        Cadence.weekly,
        3,
    )


@pytest.mark.parametrize("bad", [{"cadence": "hourly"}, {"digest_weekday": 8}])
def test_the_api_refuses_a_bad_cadence_or_weekday(
    bad: dict[str, object], app_client: TestClient
) -> None:
    response = app_client.post("/api/v1/subscriptions", json={"email": READER, **bad})
    assert response.status_code == 422


@pytest.mark.parametrize("status", [SubscriberStatus.active, SubscriberStatus.unsubscribed])
def test_a_subscribe_request_never_changes_a_known_readers_choices(
    status: SubscriberStatus, app_client: TestClient, engine: Engine
) -> None:
    add_reader(engine, READER, status=status)
    set_zone(engine, READER, "Europe/Berlin", Cadence.daily)
    asked = {"email": READER, "timezone": STRANGER_ZONE, "cadence": "weekly"}

    app_client.post("/subscribe", data=asked)
    app_client.post("/api/v1/subscriptions", json={**asked, "digest_weekday": 1})

    known = reader(engine, READER)
    assert (known.timezone, known.cadence, known.digest_weekday) == (
        "Europe/Berlin",
        Cadence.daily,
        7,
    )


def test_the_already_subscribed_notice_links_to_the_preferences(
    app_client: TestClient, engine: Engine, smtp_server: SmtpTestServer
) -> None:
    subscriber_id = add_reader(engine, READER)

    app_client.post("/subscribe", data={"email": READER})

    [notice] = smtp_server.wait_for(1, to=READER)
    [link] = links(notice, "/preferences/")
    assert path_of(link).startswith(f"/preferences/{subscriber_id}.")
    page = app_client.get(path_of(link))
    assert page.status_code == 200 and READER in page.text

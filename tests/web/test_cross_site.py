"""Another site's page cannot make a visitor's browser subscribe someone or send feedback;
mail clients, servers and the RFC 8058 one-click POST are not browsers' pages and pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from service.models import Feedback, Subscriber, SubscriberStatus
from tests.helpers import add_reader, reader

OUR_SITE = "https://news.example.com"  # BASE_URL in the tests' settings
OTHER_SITE = "https://attacker.example"
FEEDBACK = {"category": "other", "message": "The column did not arrive today."}


def count(engine: Engine, table: type[Subscriber] | type[Feedback]) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()  # sent to http://testserver; BASE_URL is https://news.example.com


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": OTHER_SITE},
        {"Origin": "null"},  # a sandboxed frame or a page that hides where it is
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://news.example.com"},  # our host, another scheme: another origin
        {"Origin": "https://news.example.com.attacker.example"},
    ],
    ids=["other-origin", "null-origin", "sec-fetch-site", "other-scheme", "lookalike-host"],
)
def test_cross_site_form_posts_are_refused_and_change_nothing(
    client: TestClient, engine: Engine, headers: dict[str, str]
) -> None:
    subscribe = client.post("/subscribe", data={"email": "victim@example.com"}, headers=headers)
    feedback = client.post("/feedback", data=FEEDBACK, headers=headers)

    for response in (subscribe, feedback):
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("text/html")
        assert "sent from another website" in response.text
    assert count(engine, Subscriber) == 0 and count(engine, Feedback) == 0


def test_cross_site_api_calls_get_json_403(client: TestClient, engine: Engine) -> None:
    response = client.post(
        "/api/v1/subscriptions", json={"email": "victim@example.com"}, headers={"Origin": "null"}
    )
    assert response.status_code == 403
    assert "another website" in response.json()["detail"]
    assert count(engine, Subscriber) == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_every_state_changing_method_is_checked(client: TestClient, method: str) -> None:
    # Refused before routing: 403, not the 405 these paths would otherwise answer.
    response = client.request(method, "/subscribe", headers={"Origin": OTHER_SITE})
    assert response.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, a server, a mail client
        {"Origin": OUR_SITE, "Sec-Fetch-Site": "same-origin"},  # our page at BASE_URL
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},  # our page, as sent
        {"Origin": "https://news.example.com:443"},  # the default port spelled out
        {"Sec-Fetch-Site": "none"},  # typed or bookmarked by the user
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["no-headers", "base-url", "request-origin", "default-port", "user-initiated", "same-site"],
)
def test_our_own_forms_and_non_browser_clients_still_work(
    client: TestClient, engine: Engine, headers: dict[str, str]
) -> None:
    subscribe = client.post("/subscribe", data={"email": "reader@example.com"}, headers=headers)
    feedback = client.post("/feedback", data=FEEDBACK, headers=headers)

    assert subscribe.status_code == 200 and "Check your inbox" in subscribe.text
    assert feedback.status_code == 200
    assert count(engine, Subscriber) == 1 and count(engine, Feedback) == 1


def test_reading_a_page_from_another_site_is_not_refused(client: TestClient) -> None:
    response = client.get("/", headers={"Origin": OTHER_SITE, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200


def test_one_click_unsubscribe_works_whatever_its_headers(
    client: TestClient, engine: Engine
) -> None:
    reader_id = add_reader(engine, "reader@example.com")
    path = client.app.state.ctx.links.unsubscribe_url(reader_id).removeprefix(OUR_SITE)  # type: ignore[attr-defined]

    response = client.post(
        path,
        data={"List-Unsubscribe": "One-Click"},
        headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    )

    assert response.status_code == 200
    assert reader(engine, "reader@example.com").status == SubscriberStatus.unsubscribed


def test_only_the_one_click_path_itself_is_exempt(client: TestClient, engine: Engine) -> None:
    reader_id = add_reader(engine, "reader@example.com")
    path = client.app.state.ctx.links.unsubscribe_url(reader_id).removeprefix(OUR_SITE)  # type: ignore[attr-defined]

    response = client.post(f"{path}/resubscribe", headers={"Origin": OTHER_SITE})

    assert response.status_code == 403

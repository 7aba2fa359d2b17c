"""Columns on the web (list, page, Atom feed) and the admin API that adds them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.models import ColumnRecord, Send
from service.web.app import create_app
from tests.conftest import SEED

ADMIN = {"Authorization": "Bearer admin-token-for-tests"}
MARKDOWN = """---
title: "Tea & Diplomacy: <Talks> Resume"
date: 2016-02-05
keys: [Iran, Tea]
---
## Talks resume

Diplomats met *again* today.
"""

# The column the mail tests build by hand (tests/columns/test_mail.py), here through the API.
SYRIA = """---
title: "World View: Syria Peace Talks Collapse in Aleppo"
date: 2016-02-04
keys: [Generational Dynamics, Syria, John Kerry, Russia, Sergei Lavrov, Staffan de Mistura, Libya]
permalink: https://www.generationaldynamics.com/pg/xct.gd.e160204.htm
---
## Syria peace talks collapse as Russia carpet bombs opposition in Aleppo

Russian warplanes were saturation bombing opposition fighters in Aleppo.

## John Kerry warns of ISIS expansion in Syria

*Kerry in Rome*

Kerry on Tuesday ruled out military intervention in Libya by the United States.
"""


@pytest.fixture
def admin_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(admin_token="admin-token-for-tests")


def post_column(client: TestClient, **fields: object) -> dict[str, object]:
    """Add a new column through the admin API; its answer."""
    response = client.post("/api/v1/admin/columns", headers=ADMIN, json=fields)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def post_seed(client: TestClient) -> dict[str, object]:
    return post_column(client, text=SEED.read_text(), date="2016-02-04", name="seed")


def test_admin_posts_a_column_and_it_appears_on_the_web(admin_client: TestClient) -> None:
    created = post_seed(admin_client)
    assert created["action"] == "created" and created["date"] == "2016-02-04"
    again = admin_client.post(
        "/api/v1/admin/columns",
        headers=ADMIN,
        json={"text": SEED.read_text(), "date": "2016-02-04"},
    )
    assert again.status_code == 200 and again.json()["action"] == "unchanged"

    listing = admin_client.get("/columns")
    assert "Syria Peace Talks Collapse" in listing.text
    page = admin_client.get(f"/columns/{created['slug']}")
    assert page.status_code == 200
    assert "John Kerry warns of ISIS expansion in Syria" in page.text
    assert "Staffan de Mistura" in page.text
    assert admin_client.get("/columns/no-such-column").status_code == 404


def test_markdown_column_is_escaped_on_page_and_in_feed(admin_client: TestClient) -> None:
    posted = post_column(admin_client, text=MARKDOWN, format="markdown")
    page = admin_client.get(f"/columns/{posted['slug']}")
    assert "Tea &amp; Diplomacy: &lt;Talks&gt; Resume" in page.text
    assert "<em>again</em>" in page.text

    feed = admin_client.get("/feed.xml")
    assert feed.headers["content-type"].startswith("application/atom+xml")
    root = ET.fromstring(feed.content)
    ns = {"a": "http://www.w3.org/2005/Atom"}
    [entry] = root.findall("a:entry", ns)
    assert entry.findtext("a:title", namespaces=ns) == "Tea & Diplomacy: <Talks> Resume"
    assert [c.get("term") for c in entry.findall("a:category", ns)] == ["Iran", "Tea"]


def test_column_page_shows_the_title_sections_and_anchors(admin_client: TestClient) -> None:
    posted = post_column(admin_client, text=SYRIA, format="markdown")
    page = admin_client.get(f"/columns/{posted['slug']}").text

    assert "<h1>World View: Syria Peace Talks Collapse in Aleppo</h1>" in page
    assert '<h2 class="section" id="section-1">Syria peace talks collapse' in page
    assert '<a href="#section-2">John Kerry warns of ISIS expansion in Syria</a>' in page
    assert '<p class="caption"><em>Kerry in Rome</em></p>' in page
    assert "saturation bombing" in page
    assert "KEYS:</strong> Generational Dynamics, Syria" in page
    assert 'href="https://www.generationaldynamics.com/pg/xct.gd.e160204.htm"' in page


def test_columns_page_links_each_column(admin_client: TestClient) -> None:
    posted = post_column(admin_client, text=SYRIA, format="markdown")
    page = admin_client.get("/columns").text

    assert f'<a href="{posted["url"]}">World View: Syria' in page
    assert "04 Feb 2016" in page


def test_admin_api_needs_the_token(
    admin_client: TestClient, settings: Settings, engine: Engine
) -> None:
    body = {"text": SEED.read_text(), "date": "2016-02-04"}
    assert admin_client.post("/api/v1/admin/columns", json=body).status_code == 401
    wrong = admin_client.post(
        "/api/v1/admin/columns", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert admin_client.get("/api/v1/admin/sends").status_code == 401
    with TestClient(create_app(settings, engine, scheduler=False)) as no_token_configured:
        assert no_token_configured.get("/api/v1/admin/sends", headers=ADMIN).status_code == 503
    with Session(engine) as session:
        assert session.exec(select(ColumnRecord)).all() == []


def test_admin_bad_columns_get_clear_errors(admin_client: TestClient) -> None:
    no_date = admin_client.post(
        "/api/v1/admin/columns", headers=ADMIN, json={"text": SEED.read_text()}
    )
    assert no_date.status_code == 422 and "no date" in no_date.json()["detail"]
    bad_yaml = admin_client.post(
        "/api/v1/admin/columns",
        headers=ADMIN,
        json={"text": "---\ntitle: [unclosed\n---\nbody", "format": "markdown"},
    )
    assert bad_yaml.status_code == 422
    unknown = admin_client.post(
        "/api/v1/admin/columns", headers=ADMIN, json={"text": "x", "colour": "red"}
    )
    assert unknown.status_code == 422
    assert (
        admin_client.post("/api/v1/admin/columns", headers=ADMIN, json={"text": ""}).status_code
        == 422
    )


def test_column_cannot_change_once_its_send_started(
    admin_client: TestClient, engine: Engine
) -> None:
    created = post_seed(admin_client)
    with Session(engine) as session:
        session.add(Send(column_id=int(created["id"])))  # type: ignore[call-overload]
        session.commit()
    edited = admin_client.post(
        "/api/v1/admin/columns",
        headers=ADMIN,
        json={"text": SEED.read_text() + "\nA late edit.", "date": "2016-02-04"},
    )
    assert edited.status_code == 409
    sends = admin_client.get("/api/v1/admin/sends", headers=ADMIN).json()
    assert [(s["date"], s["status"], s["readers"]) for s in sends] == [("2016-02-04", "sending", 0)]

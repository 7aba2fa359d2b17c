"""Request bodies past the limit get 413 before they are read into memory, whether they say
their length up front or stream it in chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from service.models import Subscriber
from service.web.app import create_app
from service.web.body_limit import MAX_BODY_BYTES, MAX_COLUMN_BODY_BYTES
from tests.conftest import make_settings

ADMIN_TOKEN = "admin-token-for-the-body-limit-tests"
CHUNK = 1024
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def subscribers(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Subscriber)).one()


def chunks(total: int) -> Iterator[bytes]:
    """A form body of `total` bytes, sent chunked (no Content-Length)."""
    yield b"email=reader%40example.com&name="
    for _ in range(total // CHUNK):
        yield b"x" * CHUNK


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(admin_token=ADMIN_TOKEN)


def test_a_form_over_the_limit_is_refused_with_a_page(client: TestClient, engine: Engine) -> None:
    filler = "x" * MAX_BODY_BYTES
    response = client.post("/subscribe", data={"email": "reader@example.com", "name": filler})

    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/html")
    assert "larger than 64 KB" in response.text
    assert subscribers(engine) == 0


def test_json_over_the_limit_is_refused_with_json(client: TestClient) -> None:
    body = {"email": "reader@example.com", "name": "x" * MAX_BODY_BYTES}
    response = client.post("/api/v1/subscriptions", json=body)

    assert response.status_code == 413
    assert "larger than 64 KB" in response.json()["detail"]


def test_a_chunked_body_without_length_is_counted(client: TestClient, engine: Engine) -> None:
    request = client.build_request(
        "POST", "/subscribe", content=chunks(MAX_BODY_BYTES + CHUNK), headers=FORM
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"

    response = client.send(request)

    assert response.status_code == 413 and "larger than 64 KB" in response.text
    assert subscribers(engine) == 0


def test_a_body_at_the_limit_is_accepted(client: TestClient, engine: Engine) -> None:
    head = b"email=reader%40example.com&website=&name="
    body = head + b"x" * (MAX_BODY_BYTES - len(head))
    assert len(body) == MAX_BODY_BYTES

    response = client.post("/subscribe", content=body, headers=FORM)

    # Read and handled: the name is too long for the form, which says so (not a 413).
    assert response.status_code == 422 and "larger than" not in response.text


def test_the_column_api_takes_a_column_past_the_general_limit(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    column = {"text": "not a column\n" * 20_000, "format": "worldview"}  # 260 KB

    accepted = client.post("/api/v1/admin/columns", json=column, headers=auth)
    too_large = client.post(
        "/api/v1/admin/columns",
        content=b"x" * (MAX_COLUMN_BODY_BYTES + 1),
        headers={**auth, "Content-Type": "application/json"},
    )

    assert accepted.status_code == 422, "read and parsed (it is not a valid column)"
    assert too_large.status_code == 413 and "larger than 4096 KB" in too_large.json()["detail"]


def test_reading_stops_at_the_first_chunk_past_the_limit(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    app = create_app(make_settings(database_url, tmp_path / "var"), engine, scheduler=False)
    sent = 0

    async def ten_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10 * 1024):
            sent += 1
            yield b"x" * CHUNK

    async def post(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # hands the app each chunk as it comes
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.post("/subscribe", content=ten_megabytes(), headers=headers)

    streamed = asyncio.run(post(FORM))
    assert streamed.status_code == 413
    assert sent == MAX_BODY_BYTES // CHUNK + 1, "not one chunk more than needed to cross it"

    sent = 0
    declared = asyncio.run(post({**FORM, "Content-Length": str(10 * 1024 * CHUNK)}))
    assert declared.status_code == 413
    assert sent == 0, "a declared length over the limit is refused before any of the body"

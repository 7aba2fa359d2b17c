"""Every response carries the security headers: each route and method of the app, the error
pages, JSON, and the OpenAPI pages with a policy that names their own inline script."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.web.app import create_app
from tests.conftest import make_settings

PARAM_RE = re.compile(r"\{[^}]+\}")
INLINE_SCRIPT_RE = re.compile(r"<script>(.*?)</script>", re.S)


@pytest.fixture
def app(database_url: str, engine: Engine, tmp_path: Path) -> FastAPI:
    """Development with the capture server, so that /dev/outbox is among the routes; plus
    one route that fails, for the 500 page."""
    settings = make_settings(database_url, tmp_path / "var", capture_port=0)
    app = create_app(settings, engine, scheduler=False)

    @app.get("/fails")
    def fails() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def policy(response: httpx.Response) -> dict[str, list[str]]:
    directives = response.headers["content-security-policy"].split(";")
    return {name: values for name, *values in (d.split() for d in directives if d.strip())}


def assert_secured(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path} → {response.status_code}"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") == "same-origin", where
    assert response.headers.get("x-frame-options") == "DENY", where
    csp = policy(response)
    assert csp["frame-ancestors"] == ["'none'"], where
    assert "'unsafe-inline'" not in csp["script-src"], where
    assert "'unsafe-eval'" not in csp["script-src"], where
    assert csp["object-src"] == ["'none'"], where


def every_request(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) for each route and method, path parameters filled with dummy values
    (app.routes holds the included routers; their routes are iterated with their prefix)."""
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            assert route.path is not None
            yield method, PARAM_RE.sub("x", route.path)


def test_every_route_and_method_answers_with_the_headers(app: FastAPI, client: TestClient) -> None:
    requests = list(every_request(app))
    assert len(requests) > 25, "the walk found the app's routes"

    responses = [client.request(method, path) for method, path in requests]
    responses += [client.get("/no-such-page"), client.delete("/subscribe")]

    for response in responses:
        assert_secured(response)
    statuses = {r.status_code for r in responses}
    assert {200, 400, 404, 405, 422, 500, 503} <= statuses, statuses
    assert "application/json" in {r.headers["content-type"] for r in responses}


def test_refusals_at_the_edge_carry_the_headers_too(client: TestClient) -> None:
    cross_site = client.post("/subscribe", headers={"Origin": "https://attacker.example"})
    too_large = client.post("/subscribe", content=b"x" * 100_000)

    assert (cross_site.status_code, too_large.status_code) == (403, 413)
    assert_secured(cross_site)
    assert_secured(too_large)


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_openapi_pages_allow_their_cdn_and_exactly_their_inline_script(
    client: TestClient, path: str
) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert_secured(response)
    scripts = policy(response)["script-src"]
    for inline in INLINE_SCRIPT_RE.findall(response.text):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in scripts
    for src in re.findall(r'<script src="(https://[^/"]+)', response.text):
        assert src in scripts


def test_swagger_ui_has_an_inline_script_to_allow(client: TestClient) -> None:
    # If FastAPI stops generating one, the hash above is vacuous: this says so.
    assert INLINE_SCRIPT_RE.search(client.get("/docs").text)

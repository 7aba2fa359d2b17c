"""Tokens: a strict shape checked before any comparison, purpose-bound, and verifiable under
old secrets after a key rotation; every route that takes one answers a bad one with a 4xx."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.context import AppContext
from service.models import Feedback, SubscriberStatus
from service.tokens import Purpose, TokenError, TokenExpired, Tokens
from tests.helpers import add_reader, reader

KEY = b"the-current-secret-key-0123456789"
OLD_KEY = b"the-retired-secret-key-0123456789"
LIFETIMES = {purpose: timedelta(days=2) for purpose in Purpose}
READER = "reader@example.com"


def test_token_round_trip_and_purpose_binding() -> None:
    tokens = Tokens(KEY, LIFETIMES)
    token = tokens.make(Purpose.unsubscribe, "42")
    assert tokens.read(Purpose.unsubscribe, token) == "42"
    with pytest.raises(TokenError):
        tokens.read(Purpose.confirm, token)
    with pytest.raises(TokenExpired):
        tokens.read(Purpose.unsubscribe, tokens.make(Purpose.unsubscribe, "42", expires=1))


def shapes(valid: str) -> list[str]:
    """Tokens that are not ours, built around a genuine one."""
    payload, expiry, signature = valid.split(".")
    return [
        "",
        "ü.ä.ö",
        "📬.📬.📬",
        valid + "ü",
        valid[:-1] + "é",
        "42.ü" + expiry + "." + signature,
        valid.replace(".", "\x00", 1),
        valid + "\r\n",
        valid + "\x00",
        "x" * 5000,
        f"{payload}.{expiry}.{signature}." + "A" * 5000,
        "..",
        "...",
        "a..b",
        f"{payload}..{signature}",
        f"{payload}.{expiry}.",
        f".{expiry}.{signature}",
        f"{payload}.{expiry}.{signature}.extra",
        f"{payload}.{expiry}.{signature}==",
        f"{payload}.{expiry}.{signature[:-1]}",
        f"{payload}.{expiry}.{signature}A",
        f"{payload}.-{expiry}.{signature}",
        f"{payload}.{'z' * 40}.{signature}",
        f"{payload} .{expiry}.{signature}",
        f"{payload}.{expiry.upper()}.{signature}",
        f"{payload}.{expiry}.{signature.replace(signature[0], '+')}",
    ]


def test_malformed_tokens_are_token_errors_never_type_errors() -> None:
    tokens = Tokens(KEY, LIFETIMES)
    valid = tokens.make(Purpose.unsubscribe, "42")
    for bad in shapes(valid):
        with pytest.raises(TokenError):
            tokens.read(Purpose.unsubscribe, bad)


def test_token_signed_under_an_old_key_verifies_after_rotation() -> None:
    before = Tokens(OLD_KEY, LIFETIMES)
    link = before.make(Purpose.unsubscribe, "42")
    after = Tokens(KEY, LIFETIMES, old_secrets=[OLD_KEY])
    assert after.read(Purpose.unsubscribe, link) == "42"
    with pytest.raises(TokenError):  # the old key still binds the purpose
        after.read(Purpose.feedback, link)


def test_new_tokens_are_signed_with_the_current_key_only() -> None:
    rotated = Tokens(KEY, LIFETIMES, old_secrets=[OLD_KEY])
    token = rotated.make(Purpose.unsubscribe, "42")
    assert Tokens(KEY, LIFETIMES).read(Purpose.unsubscribe, token) == "42"
    with pytest.raises(TokenError):
        Tokens(OLD_KEY, LIFETIMES).read(Purpose.unsubscribe, token)


def test_a_key_that_is_not_listed_fails() -> None:
    stranger = Tokens(b"some-other-secret-key-0123456789", LIFETIMES)
    token = stranger.make(Purpose.unsubscribe, "42")
    with pytest.raises(TokenError):
        Tokens(KEY, LIFETIMES, old_secrets=[OLD_KEY]).read(Purpose.unsubscribe, token)


def test_a_copy_sent_to_a_builder_process_signs_and_reads_as_the_original() -> None:
    original = Tokens(KEY, LIFETIMES, old_secrets=[OLD_KEY])
    copy = pickle.loads(pickle.dumps(original))
    expires = original.expiry(Purpose.unsubscribe)
    token = copy.make(Purpose.unsubscribe, "42", expires)
    assert token == original.make(Purpose.unsubscribe, "42", expires)
    assert original.read(Purpose.unsubscribe, token) == "42"
    rotated = Tokens(OLD_KEY, LIFETIMES).make(Purpose.feedback, "7")
    assert copy.read(Purpose.feedback, rotated) == "7"  # the retired secret came along
    assert copy.for_address(Purpose.bounce, 9) == original.for_address(Purpose.bounce, 9)
    assert copy.address_hash("Ada@Example.com") == original.address_hash("ada@example.com")


def test_rotating_the_secret_keeps_old_unsubscribe_links_working(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    reader_id = add_reader(engine, READER)
    old = "the-secret-before-the-rotation-0123"
    link = make_client(secret_key=old).app.state.ctx.links.unsubscribe_url(reader_id)  # type: ignore[attr-defined]
    path = link.removeprefix("https://news.example.com")
    rotated = make_client(secret_key="the-secret-after-the-rotation-0123", old_secret_keys=old)
    assert rotated.post(path).status_code == 200
    assert reader(engine, READER).status == SubscriberStatus.unsubscribed
    not_listed = make_client(secret_key="the-secret-after-the-rotation-0123")
    assert not_listed.post(path).status_code == 400


# Every route that takes a token, fed tokens that are not ours -------------------------------


def in_path(token: str) -> str:
    return quote(token, safe="")


ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
Call = Callable[[TestClient, str], httpx.Response]
# (route, the purpose it accepts, how to call it)
TOKEN_ROUTES: list[tuple[str, Purpose, Call]] = [
    ("GET /confirm", Purpose.confirm, lambda c, t: c.get(f"/confirm/{in_path(t)}")),
    ("HEAD /confirm", Purpose.confirm, lambda c, t: c.head(f"/confirm/{in_path(t)}")),
    ("POST /confirm", Purpose.confirm, lambda c, t: c.post(f"/confirm/{in_path(t)}")),
    ("GET /unsubscribe", Purpose.unsubscribe, lambda c, t: c.get(f"/unsubscribe/{in_path(t)}")),
    ("POST /unsubscribe", Purpose.unsubscribe, lambda c, t: c.post(f"/unsubscribe/{in_path(t)}")),
    (
        "POST /unsubscribe one-click",
        Purpose.unsubscribe,
        lambda c, t: c.post(
            f"/unsubscribe/{in_path(t)}",
            content=b"List-Unsubscribe=One-Click",
            headers=ONE_CLICK,
        ),
    ),
    (
        "POST /unsubscribe/…/resubscribe",
        Purpose.unsubscribe,
        lambda c, t: c.post(f"/unsubscribe/{in_path(t)}/resubscribe"),
    ),
    (
        "POST /resubscribe",
        Purpose.resubscribe,
        lambda c, t: c.post(f"/resubscribe/{in_path(t)}"),
    ),
    (
        "POST /api/v1/confirmations",
        Purpose.confirm,
        lambda c, t: c.post("/api/v1/confirmations", json={"token": t}),
    ),
    (
        "POST /api/v1/unsubscriptions",
        Purpose.unsubscribe,
        lambda c, t: c.post("/api/v1/unsubscriptions", json={"token": t}),
    ),
]
# A bad token on the feedback form is not refused: the reader is simply not identified,
# so that a broken link never stops anyone from telling us about a problem.
FEEDBACK_ROUTES: list[tuple[str, Call]] = [
    ("GET /feedback", lambda c, t: c.get("/feedback", params={"t": t})),
    (
        "POST /feedback",
        lambda c, t: c.post("/feedback", data={"category": "other", "message": "Hi", "t": t}),
    ),
    (
        "POST /api/v1/feedback",
        lambda c, t: c.post(
            "/api/v1/feedback", json={"category": "other", "message": "Hi", "token": t}
        ),
    ),
]
WRONG_PURPOSE = {
    Purpose.confirm: Purpose.unsubscribe,
    Purpose.unsubscribe: Purpose.confirm,
    Purpose.feedback: Purpose.unsubscribe,
    Purpose.resubscribe: Purpose.unsubscribe,
}

BadToken = Callable[[AppContext, Purpose, int], str]
MALFORMED: dict[str, BadToken] = {
    "non-ascii": lambda ctx, p, rid: "ü.ä.ö",
    "emoji": lambda ctx, p, rid: "📬.📬.📬",
    "valid-plus-umlaut": lambda ctx, p, rid: ctx.tokens.make(p, str(rid)) + "ü",
    "nul": lambda ctx, p, rid: ctx.tokens.make(p, str(rid)) + "\x00",
    "cr-lf": lambda ctx, p, rid: ctx.tokens.make(p, str(rid)) + "\r\n",
    "5000-chars": lambda ctx, p, rid: "x" * 5000,
    "empty-parts": lambda ctx, p, rid: "a..b",
    "only-dots": lambda ctx, p, rid: "...",
    "other-purpose": lambda ctx, p, rid: ctx.tokens.make(WRONG_PURPOSE[p], str(rid)),
    "expired": lambda ctx, p, rid: ctx.tokens.make(p, str(rid), expires=int(time.time()) - 1),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_every_token_route_answers_a_bad_token_with_a_4xx(
    kind: str, app_client: TestClient, engine: Engine
) -> None:
    reader_id = add_reader(engine, READER)
    ctx: AppContext = app_client.app.state.ctx  # type: ignore[attr-defined]
    for route, purpose, call in TOKEN_ROUTES:
        response = call(app_client, MALFORMED[kind](ctx, purpose, reader_id))
        assert 400 <= response.status_code < 500, (route, response.status_code)
        if route.startswith("GET"):
            assert "Something went wrong" not in response.text
    for route, call in FEEDBACK_ROUTES:
        response = call(app_client, MALFORMED[kind](ctx, Purpose.feedback, reader_id))
        assert response.status_code < 500, (route, response.status_code)
        assert READER not in response.text, route
    assert reader(engine, READER).status == SubscriberStatus.active
    with Session(engine) as session:
        assert all(f.subscriber_id is None for f in session.exec(select(Feedback)))


def test_suppression_hashes_are_hmac_sha256_under_each_key() -> None:
    import hashlib
    import hmac

    tokens = Tokens(KEY, LIFETIMES, old_secrets=[OLD_KEY])
    expected = [
        hmac.new(
            hmac.new(key, b"broadside.suppression", hashlib.sha256).digest(),
            b"ada@example.com",
            hashlib.sha256,
        ).hexdigest()
        for key in (KEY, OLD_KEY)
    ]
    assert tokens.address_hashes(" Ada@Example.com ") == expected
    assert tokens.address_hash("ada@example.com") == expected[0]
    assert tokens.hashed_addresses(["ada@example.com"]) == dict.fromkeys(
        expected, "ada@example.com"
    )

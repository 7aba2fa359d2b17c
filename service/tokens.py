"""Signed, purpose-bound, expiring tokens for the links in our mails.

A token is ``PAYLOAD.EXPIRY.SIGNATURE``: the payload (URL-safe characters), the expiry
as a base-36 Unix time, and a truncated HMAC-SHA256 over both under a key derived for
one purpose, so an unsubscribe token never passes as a confirmation token. Plain
``hmac`` rather than itsdangerous because a send signs two tokens per recipient and
itsdangerous re-derives its key on every call (~60 µs against ~3 µs here).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from datetime import timedelta
from enum import StrEnum

from .config import Settings

SIGNATURE_BYTES = 16  # 128 bits: forging one needs 2**128 tries
PAYLOAD_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")


class Purpose(StrEnum):
    confirm = "confirm"
    unsubscribe = "unsubscribe"
    feedback = "feedback"


class TokenError(Exception):
    """The token is not one of ours, was altered, or was made for another purpose."""


class TokenExpired(TokenError):
    """A genuine token that is past its expiry."""


class Tokens:
    """Signs and checks tokens with the service secret."""

    def __init__(self, secret: bytes, lifetimes: dict[Purpose, timedelta]) -> None:
        self._macs = {
            purpose: hmac.new(
                hmac.new(secret, f"broadside.{purpose}".encode(), hashlib.sha256).digest(),
                digestmod=hashlib.sha256,
            )
            for purpose in Purpose
        }
        self._lifetimes = lifetimes

    def expiry(self, purpose: Purpose, now: float | None = None) -> int:
        """Unix time at which a token made now stops working."""
        issued = time.time() if now is None else now
        return int(issued + self._lifetimes[purpose].total_seconds())

    def make(self, purpose: Purpose, payload: str, expires: int | None = None) -> str:
        """A token for `payload`; pass `expires` to sign many tokens with one expiry."""
        if not PAYLOAD_RE.fullmatch(payload):
            raise ValueError("token payloads are URL-safe characters only")
        signed = f"{payload}.{_b36(expires if expires is not None else self.expiry(purpose))}"
        return f"{signed}.{self._sign(purpose, signed)}"

    def read(self, purpose: Purpose, token: str, now: float | None = None) -> str:
        """The payload, or TokenExpired / TokenError."""
        payload, _, rest = token.partition(".")
        expiry, _, signature = rest.partition(".")
        if not (payload and expiry and signature) or len(token) > 400:
            raise TokenError(purpose)
        signed = f"{payload}.{expiry}"
        if not hmac.compare_digest(self._sign(purpose, signed), signature):
            raise TokenError(purpose)
        try:
            expires = int(expiry, 36)
        except ValueError as exc:
            raise TokenError(purpose) from exc
        if expires < (time.time() if now is None else now):
            raise TokenExpired(purpose)
        return payload

    def _sign(self, purpose: Purpose, signed: str) -> str:
        mac = self._macs[purpose].copy()
        mac.update(signed.encode("ascii", "replace"))
        return base64.urlsafe_b64encode(mac.digest()[:SIGNATURE_BYTES]).rstrip(b"=").decode()


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if not number:
            return out


def tokens_for(settings: Settings) -> Tokens:
    """The token service for these settings (lifetimes from the *_token_days settings)."""
    link_lifetime = timedelta(days=settings.unsubscribe_token_days)
    return Tokens(
        settings.secret,
        {
            Purpose.confirm: timedelta(days=settings.confirm_token_days),
            Purpose.unsubscribe: link_lifetime,
            Purpose.feedback: link_lifetime,
        },
    )

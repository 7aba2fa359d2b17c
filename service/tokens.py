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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:  # a builder process makes links and headers without the settings machinery
    from .config import Settings

SIGNATURE_BYTES = 16  # 128 bits: forging one needs 2**128 tries
SIGNATURE_CHARS = 22  # SIGNATURE_BYTES in unpadded URL-safe base64
PAYLOAD_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
# The whole token, checked before anything else is done with it: only the URL-safe ASCII
# alphabet (hmac.compare_digest raises TypeError on a str with any other character, and
# that was a 500), exactly three parts, and bounded, so 5,000 characters cost nothing.
TOKEN_RE = re.compile(r"([A-Za-z0-9_-]{1,200})\.([0-9a-z]{1,12})\.([A-Za-z0-9_-]{22})")
MAX_TOKEN = 200 + 1 + 12 + 1 + SIGNATURE_CHARS
RESUBSCRIBE_LIFETIME = timedelta(days=2)  # the goodbye page's "subscribe again" button
# Tokens inside an address's local part (VERP, the mailto: unsubscribe): the number in base 36,
# "-", and 80 bits of HMAC in lower-case base32; at most 30 characters, so that with
# BOUNCE_LOCAL (24 at most) and "+" they fit the 64 characters RFC 5321 allows a local part.
# Lower case only: relays may change the case of a local part, so it is read case-blind.
ADDRESS_MAC_BYTES = 10
ADDRESS_TOKEN_RE = re.compile(r"([0-9a-z]{1,13})-([a-z2-7]{16})")


class Purpose(StrEnum):
    """What a token may be used for; a token of one purpose never passes as another."""

    confirm = "confirm"
    unsubscribe = "unsubscribe"
    feedback = "feedback"
    resubscribe = "resubscribe"
    bounce = "bounce"  # VERP: names one delivery in a return path
    mail_unsubscribe = "mail-unsubscribe"  # names a reader in List-Unsubscribe's mailto:
    preferences = "preferences"  # the reader's own preferences page


class TokenError(Exception):
    """The token is not one of ours, was altered, or was made for another purpose."""


class TokenExpired(TokenError):
    """A genuine token that is past its expiry."""


class Tokens:
    """Signs with the service secret; verifies under it and under retired ones, so that
    rotating the secret does not break the links already sitting in readers' mailboxes."""

    def __init__(
        self,
        secret: bytes,
        lifetimes: dict[Purpose, timedelta],
        *,
        old_secrets: Sequence[bytes] = (),
    ) -> None:
        self._given = (secret, lifetimes, tuple(old_secrets))  # what a copy is made from
        self._signers = {purpose: _purpose_mac(secret, purpose) for purpose in Purpose}
        self._verifiers = {
            purpose: [self._signers[purpose], *(_purpose_mac(old, purpose) for old in old_secrets)]
            for purpose in Purpose
        }
        self._lifetimes = lifetimes
        self._hash_keys = [
            _Hmac(hmac.new(key, b"broadside.suppression", hashlib.sha256).digest())
            for key in (secret, *old_secrets)
        ]

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Keyed hashes do not pickle: a builder process makes its copy from the secrets.
        secret, lifetimes, old_secrets = self._given
        return _tokens, (secret, lifetimes, old_secrets)

    def expiry(self, purpose: Purpose, now: float | None = None) -> int:
        """Unix time at which a token made now stops working."""
        issued = time.time() if now is None else now
        return int(issued + self._lifetimes[purpose].total_seconds())

    def make(self, purpose: Purpose, payload: str, expires: int | None = None) -> str:
        """A token for `payload`; pass `expires` to sign many tokens with one expiry."""
        if not PAYLOAD_RE.fullmatch(payload):
            raise ValueError("token payloads are URL-safe characters only")
        expires = self.expiry(purpose) if expires is None else expires
        if expires < 0:
            raise ValueError("a token cannot expire before 1970")
        signed = f"{payload}.{_b36(expires)}"
        return f"{signed}.{_signature(self._signers[purpose], signed).decode('ascii')}"

    def read(self, purpose: Purpose, token: str, now: float | None = None) -> str:
        """The payload, or TokenExpired / TokenError."""
        shape = TOKEN_RE.fullmatch(token) if len(token) <= MAX_TOKEN else None
        if shape is None:
            raise TokenError(purpose)
        payload, expiry, signature = shape.groups()
        signed = f"{payload}.{expiry}"
        given = signature.encode("ascii")
        if not any(
            hmac.compare_digest(_signature(mac, signed), given) for mac in self._verifiers[purpose]
        ):
            raise TokenError(purpose)
        if int(expiry, 36) < (time.time() if now is None else now):
            raise TokenExpired(purpose)
        return payload

    def for_address(self, purpose: Purpose, number: int) -> str:
        """A short token naming `number` (a delivery, a reader) for an address's local part.
        It does not expire: a bounce or an unsubscribe by mail may come months later."""
        if not 0 <= number < 36**13:
            raise ValueError("the number does not fit an address token")
        digits = _b36(number)
        return f"{digits}-{_address_mac(self._signers[purpose], digits)}"

    def read_address(self, purpose: Purpose, token: str) -> int:
        """The number an address token names, or TokenError (not ours, altered, another
        purpose). Case-blind, as some relays change the case of local parts."""
        shape = ADDRESS_TOKEN_RE.fullmatch(token.lower()) if len(token) <= 30 else None
        if shape is None:
            raise TokenError(purpose)
        digits, given = shape.groups()
        if not any(
            hmac.compare_digest(_address_mac(mac, digits), given)
            for mac in self._verifiers[purpose]
        ):
            raise TokenError(purpose)
        return int(digits, 36)

    def address_hash(self, address: str) -> str:
        """A keyed hash of an address under the current secret (hex), case-blind: what the
        suppression list keeps, so an address can be recognised but not read back."""
        return self._hash_keys[0].hexdigest(address.strip().lower())

    def hashed_addresses(self, addresses: Iterable[str]) -> dict[str, str]:
        """Each keyed hash (current and retired secrets) of each of `addresses`, already
        normalised (lower case, no spaces) -> its address: address_hashes for a batch."""
        found: dict[str, str] = {}
        for key in self._hash_keys:
            inner_key, outer_key = key.inner, key.outer
            for address in addresses:
                inner = inner_key.copy()
                inner.update(address.encode("utf-8"))
                outer = outer_key.copy()
                outer.update(inner.digest())
                found[outer.hexdigest()] = address
        return found

    def address_hashes(self, address: str) -> list[str]:
        """The address's keyed hash under the current and every retired secret: one hashed
        before a key rotation is still recognised."""
        value = address.strip().lower()
        return [key.hexdigest(value) for key in self._hash_keys]


UNSUBSCRIBE_LOCAL = "unsubscribe"  # the mailto: unsubscribe address's local part, before "+"


@dataclass(frozen=True)
class Links:
    """The signed links and addresses a mail carries, at BASE_URL: built from the tokens alone,
    so that a builder process can make them too."""

    base_url: str
    tokens: Tokens
    bounce_domain: str | None = None  # BOUNCE_DOMAIN: where mail to an address token goes

    def confirm_url(self, token: str) -> str:
        """The confirmation link for a confirm token."""
        return f"{self.base_url}/confirm/{token}"

    def unsubscribe_url(self, subscriber_id: int, expires: int | None = None) -> str:
        """A reader's unsubscribe link (pass `expires` to share one expiry)."""
        token = self.tokens.make(Purpose.unsubscribe, str(subscriber_id), expires)
        return f"{self.base_url}/unsubscribe/{token}"

    def preferences_url(self, subscriber_id: int, expires: int | None = None) -> str:
        """A reader's own preferences page (cadence, time zone, name, their data)."""
        token = self.tokens.make(Purpose.preferences, str(subscriber_id), expires)
        return f"{self.base_url}/preferences/{token}"

    def feedback_url(self, subscriber_id: int | None = None, expires: int | None = None) -> str:
        """The feedback form's link, naming the reader when given."""
        if subscriber_id is None:
            return f"{self.base_url}/feedback"
        token = self.tokens.make(Purpose.feedback, str(subscriber_id), expires)
        return f"{self.base_url}/feedback?t={quote(token)}"

    def unsubscribe_mailto(self, subscriber_id: int) -> str | None:
        """The reader's own List-Unsubscribe mailto: address (RFC 2369), read by the bounce
        receiver; None when no receiver domain is configured (then only HTTPS is offered)."""
        if self.bounce_domain is None:
            return None
        token = self.tokens.for_address(Purpose.mail_unsubscribe, subscriber_id)
        return f"{UNSUBSCRIBE_LOCAL}+{token}@{self.bounce_domain}"


def _address_mac(mac: hmac.HMAC, number: str) -> str:
    one = mac.copy()
    one.update(number.encode("ascii"))
    return base64.b32encode(one.digest()[:ADDRESS_MAC_BYTES]).decode("ascii").lower()


class _Hmac:
    """HMAC-SHA256 under one key (RFC 2104) with the keyed inner and outer hashes computed
    once: an import hashes every address, and hmac.new sets the key up again each time."""

    def __init__(self, key: bytes) -> None:
        assert len(key) <= 64, "a key longer than SHA-256's block would be hashed first"
        block = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, value: str) -> str:
        inner = self.inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def _purpose_mac(secret: bytes, purpose: Purpose) -> hmac.HMAC:
    """An HMAC keyed for one purpose, copied per token rather than re-derived."""
    key = hmac.new(secret, f"broadside.{purpose}".encode(), hashlib.sha256).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def _signature(mac: hmac.HMAC, signed: str) -> bytes:
    """The truncated signature of `signed` (ASCII, as the callers have checked)."""
    one = mac.copy()
    one.update(signed.encode("ascii"))
    return base64.urlsafe_b64encode(one.digest()[:SIGNATURE_BYTES]).rstrip(b"=")


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if not number:
            return out


def _tokens(
    secret: bytes, lifetimes: dict[Purpose, timedelta], old_secrets: Sequence[bytes]
) -> Tokens:
    return Tokens(secret, lifetimes, old_secrets=old_secrets)


def tokens_for(settings: Settings) -> Tokens:
    """The token service for these settings: lifetimes from the *_token_days settings,
    signing with SECRET_KEY and still accepting what OLD_SECRET_KEYS signed."""
    link_lifetime = timedelta(days=settings.unsubscribe_token_days)
    return Tokens(
        settings.secret,
        {
            Purpose.confirm: timedelta(days=settings.confirm_token_days),
            Purpose.unsubscribe: link_lifetime,
            Purpose.feedback: link_lifetime,
            Purpose.preferences: link_lifetime,
            Purpose.resubscribe: RESUBSCRIBE_LIFETIME,
        },
        old_secrets=settings.old_secrets,
    )

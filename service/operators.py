"""Who may operate: the dashboard's password, its sign-in sessions and their CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .clock import utcnow
from .config import SIGN_IN_ATTEMPTS, SIGN_IN_WINDOW
from .context import Requester
from .db import transaction
from .errors import DomainError
from .limits import check_and_count
from .models import AdminSession

# Sign-in attempts (right or wrong) one client IP may make in the window; the next is refused
# before the password is even checked, so guessing costs 15 minutes per 5 tries. Counting
# attempts rather than failures keeps the check a single atomic count-and-insert.
__all__ = [
    "AdminSession", "Password", "SignedIn", "WrongPassword", "form_token_matches",
    "hash_password", "open_session", "session_for", "sign_in", "sign_out", "token_hash",
]  # fmt: skip
HASH_PREFIX = "$argon2"
MIN_PASSWORD = 12  # what Settings asks of a plain ADMIN_PASSWORD
_hasher = PasswordHasher()


class WrongPassword(DomainError):
    """The password given at sign-in is not the dashboard's."""


def hash_password(plain: str) -> str:
    """The argon2id hash of a password, for ADMIN_PASSWORD (`broadside admin hash-password`)."""
    return _hasher.hash(plain)


@dataclass(frozen=True)
class Password:
    """The dashboard's password as an argon2 hash: ADMIN_PASSWORD itself when it is one,
    else the plain password hashed once (at start-up), so neither is ever compared as text."""

    hash: str

    @classmethod
    def from_setting(cls, value: str) -> Password:
        """From ADMIN_PASSWORD; ValueError when it looks like an argon2 hash but is not one."""
        if not value.startswith(HASH_PREFIX):
            return cls(hash_password(value))
        try:
            extract_parameters(value)
        except InvalidHashError:
            raise ValueError("looks like an argon2 hash but cannot be read as one") from None
        return cls(value)

    def matches(self, given: str) -> bool:
        """Whether `given` is the password (argon2's own constant-time verification)."""
        try:
            return _hasher.verify(self.hash, given)
        except (VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True)
class SignedIn:
    """A new session: the cookie's token (only its hash is stored) and the form token."""

    token: str
    csrf_token: str
    expires_at: datetime


def sign_in(
    engine: Engine,
    password: Password,
    given: str,
    *,
    who: Requester,
    hours: float,
    now: datetime | None = None,
) -> SignedIn:
    """Count the attempt against the client's IP (RateLimited past SIGN_IN_ATTEMPTS), then
    check the password (WrongPassword) and open a session of `hours`. The count is
    committed on its own, before the slow hash check, so a wrong guess always counts and
    no write lock is held while argon2 works."""
    now = now or utcnow()
    with transaction(engine) as session:
        key = f"admin-sign-in:{who.ip or 'unknown'}"
        check_and_count(session, key, limit=SIGN_IN_ATTEMPTS, window=SIGN_IN_WINDOW, now=now)
    if not password.matches(given):
        raise WrongPassword("that is not the dashboard's password")
    with transaction(engine) as session:
        return open_session(session, who=who, hours=hours, now=now)


def open_session(
    session: Session, *, who: Requester, hours: float, now: datetime | None = None
) -> SignedIn:
    """A new session lasting `hours`; sessions that have expired are cleared on the way."""
    now = now or utcnow()
    session.execute(delete(AdminSession).where(col(AdminSession.expires_at) <= now))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + timedelta(hours=hours)
    session.add(
        AdminSession(
            token_hash=token_hash(token),
            csrf_token=csrf,
            created_at=now,
            expires_at=expires,
            ip=who.ip[:64] if who.ip else None,
            user_agent=who.user_agent[:512] if who.user_agent else None,
        )
    )
    session.flush()
    return SignedIn(token, csrf, expires)


def token_hash(token: str) -> str:
    """What the table keeps of a cookie's token: a stolen database opens no session."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_for(session: Session, token: str, now: datetime | None = None) -> AdminSession | None:
    """The unexpired session whose cookie holds `token`, or None."""
    if not token:
        return None
    found = session.exec(
        select(AdminSession).where(col(AdminSession.token_hash) == token_hash(token))
    ).first()
    if found is None or found.expires_at <= (now or utcnow()):
        return None
    return found


def sign_out(session: Session, token: str) -> None:
    """End the session of `token` for good (its cookie opens nothing any more)."""
    session.execute(delete(AdminSession).where(col(AdminSession.token_hash) == token_hash(token)))


def form_token_matches(operator: AdminSession, given: str) -> bool:
    """Whether a form's CSRF token is its session's (compared in constant time)."""
    return bool(given) and hmac.compare_digest(operator.csrf_token.encode(), given.encode())

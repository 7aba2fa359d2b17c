"""Domain exceptions; the web layer maps them to pages and status codes in one place."""

from __future__ import annotations


class DomainError(Exception):
    """Something the reader or operator did that we answer with a clear message."""


class InvalidInput(DomainError):
    """A field failed validation; `field` names it for the form or the JSON error."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RateLimited(DomainError):
    """Too many attempts; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; retry after {retry_after} s")
        self.retry_after = retry_after


class LinkUsed(DomainError):
    """A single-use link that has already done its job."""


class AlreadyConfirmed(DomainError):
    """The subscription this confirmation link is for is already active."""


class NotFound(DomainError):
    """The thing a link or path points at does not exist."""


class CannotResubscribe(DomainError):
    """The goodbye page's button cannot bring this address back: it bounced, complained or
    changed since; only a fresh double opt-in through the form can."""

    def __init__(self, email: str, status: str) -> None:
        super().__init__(f"{email} is {status}; subscribe again through the form")
        self.email = email
        self.status = status

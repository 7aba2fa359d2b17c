"""The one place that talks SMTP: connections, hand-off of bytes, and sorting failures."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import aiosmtplib

from ..config import SmtpTarget

log = logging.getLogger(__name__)
QUIT_TIMEOUT = 5.0


@dataclass(eq=False)
class SmtpFailure(Exception):
    """A hand-off that did not succeed, sorted once: permanent (5xx to this recipient or
    this message) or transient (4xx, refused or dropped connection, timeout)."""

    permanent: bool
    reason: str
    code: int | None = None
    connection_lost: bool = False

    def __str__(self) -> str:
        return self.reason


def classify(exc: BaseException) -> SmtpFailure:
    """Sort an aiosmtplib or socket error into a permanent or transient failure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        code = first.code if first else None
        message = first.message if first else str(exc)
        return SmtpFailure(_is_permanent(code), _reason("RCPT", code, message), code)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        # Our envelope sender was refused: a problem with us, never with the reader.
        return SmtpFailure(False, _reason("MAIL FROM", exc.code, exc.message), exc.code)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SmtpFailure(False, _reason("AUTH", exc.code, exc.message), exc.code, True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return SmtpFailure(False, f"connection failed: {exc}", None, True)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return SmtpFailure(False, f"timeout: {exc or 'no answer'}", None, True)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        closing = exc.code == 421  # RFC 5321 4.2.2: the server is closing the channel
        return SmtpFailure(
            _is_permanent(exc.code), _reason("DATA", exc.code, exc.message), exc.code, closing
        )
    if isinstance(exc, OSError | aiosmtplib.SMTPException):
        return SmtpFailure(False, f"connection failed: {exc}", None, True)
    raise exc


def _is_permanent(code: int | None) -> bool:
    return code is not None and 500 <= code < 600


def _reason(stage: str, code: int | None, message: str) -> str:
    return f"{stage} {code}: {message}"[:1000]


class SmtpConnection:
    """One reusable connection to the relay; reconnects when the previous one is gone,
    and after `max_messages` hand-offs so that a long send spreads over fresh sessions."""

    def __init__(self, target: SmtpTarget, max_messages: int = 1000) -> None:
        self.target = target
        self.max_messages = max_messages
        self._smtp: aiosmtplib.SMTP | None = None
        self._count = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        t = self.target
        smtp = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            username=t.username,
            password=t.password,
            use_tls=t.implicit_tls,
            start_tls=t.starttls,
            timeout=t.timeout,
            local_hostname=socket.getfqdn() or "localhost",
        )
        await smtp.connect()
        self._count = 0
        return smtp

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        """Hand one message to the relay, or raise SmtpFailure."""
        try:
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._connect()
            elif self._count >= self.max_messages:
                await self.close()
                self._smtp = await self._connect()
            self._count += 1
            await self._smtp.sendmail(envelope_from, [recipient], data)
        except Exception as exc:
            failure = classify(exc)
            if failure.connection_lost:
                await self.abort()
            raise failure from exc

    async def close(self) -> None:
        """QUIT politely (briefly); a dead or silent connection is just dropped."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit(timeout=QUIT_TIMEOUT)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                smtp.close()

    async def abort(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def __aenter__(self) -> SmtpConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_rest: object) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            await self.abort()  # cancelled mid-conversation: the session state is unknown
        else:
            await self.close()

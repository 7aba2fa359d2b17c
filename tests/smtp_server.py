"""A real SMTP server for tests (aiosmtpd) that records what it accepts and injects faults."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, Session

from service.mail.listener import BoundController
from tests.helpers import eventually


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: datetime = field(default_factory=lambda: datetime.now(UTC))  # when it was accepted

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


class Recorder:
    """aiosmtpd handler: records accepted mail; answers RCPT with scripted replies."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        # address -> list of replies to give, one per attempt ("451 ...", "550 ..."); an
        # address whose list is empty is accepted.
        self.rcpt_replies: dict[str, list[str]] = {}
        self.drop_every: int = 0  # drop the connection at DATA on every Nth message
        self.rcpt_reply_all: str | None = None  # refuse every RCPT with this ("554 5.7.1 …")
        self.data_reply: str | None = None  # answer every DATA with this instead of 250
        self.data_delay: float = 0.0  # seconds to think before answering DATA
        # Called with the session and the envelope once a message's end has arrived, before
        # it is accepted: what the client must have done by then (tests/delivery).
        self.on_end: Callable[[Session, Envelope], None] | None = None
        # Offer PIPELINING (RFC 2920) as real relays do; aiosmtpd reads a pipelined group a
        # command at a time and answers each as it goes, in segments of their own.
        self.pipelining = True
        self._data_count = 0

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself without this hook
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        with self.lock:
            if self.rcpt_reply_all:
                return self.rcpt_reply_all
            replies = self.rcpt_replies.get(address.lower())
            if replies:
                reply = (
                    replies.pop(0)
                    if len(replies) > 1 or not replies[0].startswith("5")
                    else replies[0]
                )
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.on_end is not None:
            self.on_end(session, envelope)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            if self.data_reply:
                return self.data_reply
            self._data_count += 1
            drop = self.drop_every and self._data_count % self.drop_every == 0
        if drop:
            # Vanish without answering: the client cannot know whether we took it.
            assert server.transport is not None
            server.transport.abort()
            return "421 4.4.2 gone"
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from or "",
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                )
            )
        return "250 2.0.0 OK"


class SmtpTestServer:
    """Start, stop and restart on the same port; wait for mail to arrive."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.handler = Recorder()
        self.port = 0
        self.credentials = credentials  # when set, AUTH is required (plain text, no TLS)
        self._controller: BoundController | None = None

    def start(self) -> None:
        """Listen: on a free port the first time, on the same one after a stop."""
        auth: dict[str, object] = {}
        if self.credentials is not None:
            auth = {
                "auth_required": True,
                "auth_require_tls": False,
                "authenticator": self._authenticate,
            }
        controller = BoundController(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10, **auth
        )
        controller.start()
        self._controller, self.port = controller, controller.port

    def _authenticate(
        self,
        _server: SMTPServer,
        _session: Session,
        _envelope: Envelope,
        _mechanism: str,
        data: object,
    ) -> AuthResult:
        login = getattr(data, "login", b"") or b""
        password = getattr(data, "password", b"") or b""
        expected = self.credentials or ("", "")
        ok = (login.decode(), password.decode()) == expected
        return AuthResult(success=ok, handled=False)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def per_recipient(self) -> Counter[str]:
        """How many messages each address got (every sender here names one recipient)."""
        return Counter(r.rcpt_tos[0] for r in self.received)

    def messages_to(self, address: str) -> list[Received]:
        return [r for r in self.received if address.lower() in (a.lower() for a in r.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 10.0, to: str | None = None) -> list[Received]:
        """Wait until at least `count` messages (to `to`, if given) have arrived; returns
        what has arrived (fewer than `count` when `timeout` ran out)."""
        got: list[Received] = []

        def enough() -> bool:
            nonlocal got
            got = self.messages_to(to) if to else self.received
            return len(got) >= count

        eventually(enough, timeout, every=0.02)
        return got

    def reply_to_rcpt(self, address: str, *replies: str) -> None:
        with self.handler.lock:
            self.handler.rcpt_replies[address.lower()] = list(replies)

    def clear(self) -> None:
        with self.handler.lock:
            self.handler.received.clear()
            self.handler.rcpt_replies.clear()
            self.handler.drop_every = 0
            self.handler.rcpt_reply_all = None
            self.handler.data_reply = None
            self.handler.data_delay = 0.0
            self.handler.pipelining = True

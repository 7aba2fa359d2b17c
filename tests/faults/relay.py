"""A relay that misbehaves on purpose: throttles, refuses mailboxes, drops the connection in
the middle of DATA, stalls past the client's timeout. Each fault is decided by a hash of
the address and the attempt, so a run is reproducible and every fault also clears."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from tests.smtp_server import Recorder, SmtpTestServer


@dataclass
class FaultRates:
    throttled: float = 0.10  # 451 at RCPT, on the first attempt
    unknown: float = 0.01  # 550 5.1.1 at RCPT, every attempt
    dropped: float = 0.01  # connection dropped mid-DATA, on the first attempt
    stalled: float = 0.01  # no answer to DATA until past the client's timeout, first attempt
    stall_seconds: float = 3.0


def _share(address: str, fault: str) -> float:
    digest = hashlib.sha256(f"{fault}:{address}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultyRecorder(Recorder):
    def __init__(self, rates: FaultRates) -> None:
        super().__init__()
        self.rates = rates
        self.attempts: Counter[tuple[str, str]] = Counter()

    def fault(self, address: str, kind: str) -> bool:
        rate = getattr(self.rates, kind)
        return bool(_share(address, kind) < rate)

    def unknown(self, address: str) -> bool:
        return self.fault(address, "unknown")

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        with self.lock:
            self.attempts[("rcpt", address)] += 1
            first = self.attempts[("rcpt", address)] == 1
        if self.unknown(address):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if first and self.fault(address, "throttled"):
            return f"451 4.7.1 <{address}>: Throttled, try again later"
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        address = envelope.rcpt_tos[0]
        with self.lock:
            self.attempts[("data", address)] += 1
            first = self.attempts[("data", address)] == 1
        if first and self.fault(address, "dropped"):
            assert server.transport is not None
            server.transport.abort()  # gone before answering: the client cannot know
            return "421 4.4.2 gone"
        if first and self.fault(address, "stalled"):
            await asyncio.sleep(self.rates.stall_seconds)
            assert server.transport is not None
            server.transport.abort()  # the client gave up long ago; nothing is kept
            return "421 4.4.2 too slow"
        return await super().handle_DATA(server, session, envelope)


class FaultyRelay(SmtpTestServer):
    def __init__(self, rates: FaultRates | None = None) -> None:
        super().__init__()
        self.handler = FaultyRecorder(rates=rates or FaultRates())

    @property
    def faulty(self) -> FaultyRecorder:
        assert isinstance(self.handler, FaultyRecorder)
        return self.handler

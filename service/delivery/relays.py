"""Several relays (SMTP_URLS): each of a worker's connections picks one by weight; a relay that
lost or refused a connection is skipped until a probe finds it back; each relay's hourly cap
holds across every worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy.engine import Engine

from ..config import (
    READINESS_RELAY_TIMEOUT,
    RELAY_BACKOFF_MAX_SECONDS,
    RELAY_BACKOFF_SECONDS,
    RELAY_CAP_BATCH,
    Settings,
)
from ..mail.smtp import SmtpConnection, SmtpFailure, SmtpTarget, probe, relay_target
from .ratelimit import MIN_WAIT, SharedRate

log = logging.getLogger(__name__)
FULL_POLL = 1.0  # seconds between looks at a stop while every relay is at its hourly cap


@dataclass(eq=False)
class Relay:
    """One relay and what this worker knows of it."""

    target: SmtpTarget
    weight: int = 1
    cap: SharedRate | None = None  # PER_HOUR, shared with every worker
    down: bool = False
    probe_at: float = 0.0  # when a down relay is next probed (monotonic seconds)
    backoff: float = RELAY_BACKOFF_SECONDS
    probing: bool = False
    full_until: float = 0.0  # its cap is spent until then
    current: int = 0  # smooth weighted round robin

    @property
    def label(self) -> str:
        """host:port: what the ledger records."""
        return self.target.endpoint.label


def relays_for(engine: Engine, settings: Settings, target: SmtpTarget) -> Relays:
    """The configured relays when `target` is the first of them (the process's relay);
    otherwise `target` alone (the capture server, a test sink)."""
    if not settings.relays or relay_target(settings) != target:
        return Relays([Relay(target)])
    relays = []
    for spec in settings.relays:
        cap = None
        if spec.per_hour is not None:
            cap = SharedRate(
                engine,
                f"relay:{spec.url.label}",
                per_second=spec.per_hour / 3600,
                capacity=spec.per_hour,
                batch=min(RELAY_CAP_BATCH, spec.per_hour),
            )
        relays.append(Relay(SmtpTarget(spec.url, settings.smtp_timeout), spec.weight, cap))
    return Relays(relays)


class Relays:
    """The relays one worker sends through, and their health as this worker sees it."""

    def __init__(self, relays: list[Relay], clock: Callable[[], float] = time.monotonic) -> None:
        self.relays = relays
        self.clock = clock

    async def choose(self, stopping: asyncio.Event) -> Relay | None:
        """The relay for a new connection: by weight among those up and under their cap. When
        all are down, the one probed soonest (the hand-off fails and retries like any outage);
        when all that are up are at their cap, wait for one (None once `stopping` is set)."""
        while not stopping.is_set():
            await self._probe_due()
            now = self.clock()
            up = [r for r in self.relays if not r.down]
            if not up:
                return min(self.relays, key=lambda r: r.probe_at)
            usable = [r for r in up if r.full_until <= now]
            if usable:
                return _by_weight(usable)
            wait = min(FULL_POLL, max(MIN_WAIT, min(r.full_until for r in up) - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stopping.wait()
        return None

    async def under_cap(self, relay: Relay) -> bool:
        """Take one message of `relay`'s hourly cap; False (and the relay set aside until its
        bucket refills) when it is spent."""
        if relay.cap is None:
            return True
        wait = await relay.cap.try_acquire()
        if wait > 0:
            relay.full_until = self.clock() + wait
            log.info("relay %s reached its hourly cap; others take over", relay.label)
        return wait == 0

    def failed(self, relay: Relay, failure: SmtpFailure) -> None:
        """A connection to `relay` was lost or refused: skip it until a probe finds it back."""
        if not relay.down and len(self.relays) > 1:
            log.warning("relay %s skipped: %s", relay.label, failure)
        elif relay.down:
            relay.backoff = min(relay.backoff * 2, RELAY_BACKOFF_MAX_SECONDS)
        relay.down = True
        relay.probe_at = self.clock() + relay.backoff

    def reachable(self, relay: Relay) -> None:
        """A hand-off through `relay` went through."""
        if relay.down:
            log.info("relay %s is back", relay.label)
        relay.down, relay.backoff = False, RELAY_BACKOFF_SECONDS

    async def _probe_due(self) -> None:
        """Probe (connect, EHLO, QUIT) each down relay whose backoff is over, one caller at a
        time per relay."""
        for relay in self.relays:
            if not relay.down or relay.probing or relay.probe_at > self.clock():
                continue
            relay.probing = True
            try:
                timeout = min(relay.target.timeout, READINESS_RELAY_TIMEOUT)
                await probe(replace(relay.target, timeout=timeout))
            except SmtpFailure as failure:
                self.failed(relay, failure)
            else:
                self.reachable(relay)
            finally:
                relay.probing = False


def _by_weight(relays: list[Relay]) -> Relay:
    """Smooth weighted round robin (nginx's): weights 3 and 1 give a, a, b, a, … evenly."""
    total = sum(r.weight for r in relays)
    for relay in relays:
        relay.current += relay.weight
    chosen = max(relays, key=lambda r: r.current)
    chosen.current -= total
    return chosen


class RelayConnection(SmtpConnection):
    """A connection to one relay that tells the relays how its hand-offs went."""

    def __init__(self, relays: Relays, relay: Relay, max_messages: int) -> None:
        super().__init__(relay.target, max_messages)
        self.relays = relays
        self.relay = relay

    async def send(self, *args: object, **kwargs: object) -> None:
        """SmtpConnection.send, noting a lost or refused connection against the relay."""
        try:
            await super().send(*args, **kwargs)  # type: ignore[arg-type]
        except SmtpFailure as failure:
            if failure.connection_lost:
                self.relays.failed(self.relay, failure)
            raise
        self.relays.reachable(self.relay)


class RelayLink:
    """One of a worker's connections: it stays on the relay it chose until that relay goes
    down or reaches its cap, then chooses again."""

    def __init__(self, relays: Relays, max_messages: int) -> None:
        self.relays = relays
        self.max_messages = max_messages
        self.conn: RelayConnection | None = None

    async def connection(self, stopping: asyncio.Event) -> RelayConnection | None:
        """The connection for the next message, under its relay's cap; None once stopping."""
        while not stopping.is_set():
            conn = self.conn
            if conn is None or conn.relay.down or conn.relay.full_until > self.relays.clock():
                relay = await self.relays.choose(stopping)
                if relay is None:
                    return None
                if conn is None or conn.relay is not relay:
                    await self.close()
                    conn = self.conn = RelayConnection(self.relays, relay, self.max_messages)
            if await self.relays.under_cap(conn.relay):
                return conn
        return None

    async def close(self) -> None:
        """QUIT the current connection, if any."""
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()

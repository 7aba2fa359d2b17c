"""Whether this process can do its work now: the database answers, its schema is the code's,
and the relay answers EHLO (asked at most every RELAY_CHECK_INTERVAL seconds)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .config import (
    READINESS_DATABASE_TIMEOUT,
    READINESS_RELAY_CHECK_INTERVAL,
    READINESS_RELAY_TIMEOUT,
)
from .mail.smtp import Fault, SmtpFailure, SmtpTarget, probe
from .migrate import code_heads, database_heads

log = logging.getLogger(__name__)
OK = "ok"
# A readiness probe is asked every few seconds and must answer within its own timeout (a
# second or a few): a relay or database slower than this counts as not answering; and a probe
# every few seconds must not become an SMTP session every few seconds.
DATABASE_TIMEOUT = READINESS_DATABASE_TIMEOUT
RELAY_TIMEOUT = READINESS_RELAY_TIMEOUT
RELAY_CHECK_INTERVAL = READINESS_RELAY_CHECK_INTERVAL


@dataclass(frozen=True)
class Check:
    """One check's outcome: `state` is shown to whoever asks, `detail` is for the log."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class Readiness:
    """Every check by name (database, migrations, relay)."""

    checks: dict[str, Check]

    @property
    def ready(self) -> bool:
        """All checks passed."""
        return not self.failing

    @property
    def failing(self) -> list[str]:
        """The names of the checks that did not pass."""
        return [name for name, check in self.checks.items() if check.state != OK]


class ReadinessProbe:
    """Runs the checks; remembers the relay's answer for RELAY_CHECK_INTERVAL seconds, and
    logs when the outcome changes rather than at every probe."""

    def __init__(
        self, engine: Engine, target: SmtpTarget, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = engine
        self.target = replace(target, timeout=min(target.timeout, RELAY_TIMEOUT))
        self.clock = clock
        self._relay: tuple[float, Check] | None = None  # when it was asked, what it said
        self._relay_lock = asyncio.Lock()  # concurrent probes share one SMTP session
        self._logged: dict[str, Check] = {}

    async def check(self) -> Readiness:
        """Every check, now (the relay's from the cache while it is fresh)."""
        database, migrations = await self._schema()
        outcome = Readiness(
            {"database": database, "migrations": migrations, "relay": await self._relay_check()}
        )
        self._log_changes(outcome)
        return outcome

    async def _schema(self) -> tuple[Check, Check]:
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT):
                current = await asyncio.to_thread(database_heads, self.engine)
        except (SQLAlchemyError, TimeoutError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            return Check("unreachable", reason), Check("unknown")
        expected = code_heads()
        if current == expected:
            return Check(OK), Check(OK)
        revisions = f"database at {_named(current)}, code at {_named(expected)}"
        return Check(OK), Check(f"behind ({revisions})", "run `broadside db upgrade`")

    async def _relay_check(self) -> Check:
        async with self._relay_lock:
            now = self.clock()
            if self._relay is None or now - self._relay[0] >= RELAY_CHECK_INTERVAL:
                self._relay = (now, await self._ask_relay())
            return self._relay[1]

    async def _ask_relay(self) -> Check:
        try:
            await probe(self.target)
        except SmtpFailure as failure:
            # The relay's host and reply go to the log only: /readyz answers anyone.
            return Check("refused" if failure.fault is Fault.relay else "unreachable", str(failure))
        return Check(OK)

    def _log_changes(self, outcome: Readiness) -> None:
        for name, check in outcome.checks.items():
            before = self._logged.get(name)
            if before is not None and before.state == check.state:
                continue
            self._logged[name] = check
            if check.state != OK:
                log.warning("not ready: %s %s: %s", name, check.state, check.detail)
            elif before is not None:
                log.info("ready again: %s ok", name)


def _named(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"

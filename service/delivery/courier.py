"""What delivering needs besides the column, built once per process and handed down whole."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ..clock import now
from ..config import Settings
from ..context import AppContext
from ..mail.smtp import SmtpTarget


@dataclass(frozen=True)
class Courier:
    """The database, the app's context (settings, tokens, templates) and the SMTP target."""

    engine: Engine
    ctx: AppContext
    target: SmtpTarget
    clock: Callable[[], dt.datetime] = now  # aware UTC; tests pass one they move

    def utcnow(self) -> dt.datetime:
        """The clock's now as naive UTC, as the ledger stores it."""
        return self.clock().astimezone(dt.UTC).replace(tzinfo=None)

    @property
    def settings(self) -> Settings:
        """The settings, from the app context."""
        return self.ctx.settings

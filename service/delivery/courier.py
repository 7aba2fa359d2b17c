"""What delivering needs besides the column, built once per process and handed down whole."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ..config import Settings
from ..context import AppContext
from ..mail.smtp import SmtpTarget


@dataclass(frozen=True)
class Courier:
    """The database, the app's context (settings, tokens, templates) and the SMTP target."""

    engine: Engine
    ctx: AppContext
    target: SmtpTarget

    @property
    def settings(self) -> Settings:
        """The settings, from the app context."""
        return self.ctx.settings

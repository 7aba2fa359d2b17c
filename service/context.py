"""What every domain function needs besides a session: settings, tokens, the public links
built from them, mail templates and the DKIM signer. Built once at start-up, passed down."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .mail.dkim import DkimSigner
from .mail.render import MailTemplates
from .tokens import Links, Purpose, Tokens, tokens_for


@dataclass(frozen=True)
class Requester:
    """Who asked: kept with each consent decision and used for rate limits."""

    ip: str | None = None
    user_agent: str | None = None
    source: str = "web"


@dataclass(frozen=True)
class AppContext:
    """Settings, tokens, the links a mail carries, mail templates and the DKIM signer: what
    every domain function is handed."""

    settings: Settings
    tokens: Tokens
    links: Links
    mail: MailTemplates
    dkim: DkimSigner | None = None  # None: DKIM not configured, mail goes out unsigned

    def return_path(self, delivery_id: int) -> str:
        """The envelope sender of one column delivery: with BOUNCE_DOMAIN, a VERP address
        (BOUNCE_LOCAL+token@BOUNCE_DOMAIN) whose signed token names the delivery, so that any
        bounce to it is attributed without reading the report; else ENVELOPE_FROM."""
        s = self.settings
        if s.bounce_domain is None:
            return s.mail_from
        token = self.tokens.for_address(Purpose.bounce, delivery_id)
        return f"{s.bounce_local}+{token}@{s.bounce_domain}"


def build_context(settings: Settings) -> AppContext:
    """The context for these settings, built once at start-up."""
    tokens = tokens_for(settings)
    return AppContext(
        settings=settings,
        tokens=tokens,
        links=Links(settings.base_url, tokens, settings.bounce_domain),
        mail=MailTemplates(settings),
        dkim=DkimSigner.from_settings(settings),  # the keys are loaded here, once
    )

"""What every domain function needs besides a session: settings, tokens, mail templates,
the DKIM signer, and the public URLs built from them. Built once at start-up, passed down."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from .config import Settings
from .mail.dkim import DkimSigner
from .mail.render import MailTemplates
from .tokens import Purpose, Tokens, tokens_for

UNSUBSCRIBE_LOCAL = "unsubscribe"  # the mailto: unsubscribe address's local part, before "+"


@dataclass(frozen=True)
class Requester:
    """Who asked: kept with each consent decision and used for rate limits."""

    ip: str | None = None
    user_agent: str | None = None
    source: str = "web"


@dataclass(frozen=True)
class AppContext:
    """Settings, tokens, mail templates and the DKIM signer: what every domain function is
    handed."""

    settings: Settings
    tokens: Tokens
    mail: MailTemplates
    dkim: DkimSigner | None = None  # None: DKIM not configured, mail goes out unsigned

    def confirm_url(self, token: str) -> str:
        """The confirmation link for a confirm token."""
        return f"{self.settings.base_url}/confirm/{token}"

    def unsubscribe_url(self, subscriber_id: int, expires: int | None = None) -> str:
        """A reader's unsubscribe link (pass `expires` to share one expiry)."""
        token = self.tokens.make(Purpose.unsubscribe, str(subscriber_id), expires)
        return f"{self.settings.base_url}/unsubscribe/{token}"

    def preferences_url(self, subscriber_id: int, expires: int | None = None) -> str:
        """A reader's own preferences page (cadence, time zone, name, their data)."""
        token = self.tokens.make(Purpose.preferences, str(subscriber_id), expires)
        return f"{self.settings.base_url}/preferences/{token}"

    def feedback_url(self, subscriber_id: int | None = None, expires: int | None = None) -> str:
        """The feedback form's link, naming the reader when given."""
        if subscriber_id is None:
            return f"{self.settings.base_url}/feedback"
        token = self.tokens.make(Purpose.feedback, str(subscriber_id), expires)
        return f"{self.settings.base_url}/feedback?t={quote(token)}"

    def return_path(self, delivery_id: int) -> str:
        """The envelope sender of one column delivery: with BOUNCE_DOMAIN, a VERP address
        (BOUNCE_LOCAL+token@BOUNCE_DOMAIN) whose signed token names the delivery, so that any
        bounce to it is attributed without reading the report; else ENVELOPE_FROM."""
        s = self.settings
        if s.bounce_domain is None:
            return s.mail_from
        token = self.tokens.for_address(Purpose.bounce, delivery_id)
        return f"{s.bounce_local}+{token}@{s.bounce_domain}"

    def unsubscribe_mailto(self, subscriber_id: int) -> str | None:
        """The reader's own List-Unsubscribe mailto: address (RFC 2369), read by the bounce
        receiver; None when no receiver domain is configured (then only HTTPS is offered)."""
        domain = self.settings.bounce_domain
        if domain is None:
            return None
        token = self.tokens.for_address(Purpose.mail_unsubscribe, subscriber_id)
        return f"{UNSUBSCRIBE_LOCAL}+{token}@{domain}"


def build_context(settings: Settings) -> AppContext:
    """The context for these settings, built once at start-up."""
    return AppContext(
        settings=settings,
        tokens=tokens_for(settings),
        mail=MailTemplates(settings),
        dkim=DkimSigner.from_settings(settings),  # the keys are loaded here, once
    )

"""EmailMessage building: headers that stay ASCII, bodies in quoted-printable, bytes once."""

from __future__ import annotations

import email.policy
import email.utils
import secrets
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage

from ..config import Settings

# RFC 2045 6.7: quoted-printable lines are at most 76 characters; policy.SMTP writes 78.
POLICY = email.policy.SMTP.clone(max_line_length=76)


@dataclass(frozen=True)
class Rendered:
    """A mail's two bodies, as the templates produced them."""

    subject: str
    text: str
    html: str


def sender(settings: Settings) -> str:
    """The From header value: display name (RFC 2047-encoded when not ASCII) and address."""
    return email.utils.formataddr((settings.from_name, settings.from_address), charset="utf-8")


def recipient(address: str, name: str = "") -> str:
    return email.utils.formataddr((name, address), charset="utf-8") if name else address


def message_id(domain: str, local: str | None = None) -> str:
    """A Message-ID; pass `local` for one that is stable across retries."""
    return f"<{local or secrets.token_hex(16)}@{domain}>"


def build(
    settings: Settings,
    *,
    to: str,
    rendered: Rendered,
    to_name: str = "",
    reply_to: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A multipart/alternative mail (text/plain first, text/html last) from our address."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender(settings)
    msg["To"] = recipient(to, to_name)
    msg["Subject"] = rendered.subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = message_id(settings.mail_domain)
    if reply_to or settings.reply_to:
        msg["Reply-To"] = str(Address(addr_spec=reply_to or settings.reply_to or ""))
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """Flatten once with our policy (CRLF, 76-column QP); these bytes are what goes out."""
    return msg.as_bytes(policy=POLICY)

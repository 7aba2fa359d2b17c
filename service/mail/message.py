"""EmailMessage building: headers that stay ASCII, bodies in quoted-printable, bytes once."""

from __future__ import annotations

import binascii
import datetime as dt
import email.policy
import email.utils
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a builder process makes links and headers without the settings machinery
    from ..config import Settings

# RFC 2045 6.7: quoted-printable lines are at most 76 characters; policy.SMTP writes 78.
# refold_source="none": the headers we fold and encode ourselves (stored with set_raw) go out
# as written; the standard library would refold them its own way past 76 characters.
POLICY = email.policy.SMTP.clone(max_line_length=76, refold_source="none")

# RFC 5322 2.1.1: a header line SHOULD be at most 78 characters (998 is the hard limit).
LINE_LIMIT = 78
# RFC 2047 2: an encoded-word is at most 75 characters, "=?utf-8?b?" and "?=" included.
WORD_LIMIT = 75
_WORD_FRAME = len("=?utf-8?b??=")

_CONTROLS = {c: " " for c in [*range(0x20), 0x7F]}
_LINE_BREAKING = ("Cc", "Zl", "Zp")  # control characters, line and paragraph separators
# RFC 5322 3.2.3: printable ASCII outside atext; a display name with one must be quoted.
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


@dataclass(frozen=True)
class Rendered:
    """A mail's two bodies, as the templates produced them."""

    subject: str
    text: str
    html: str


def one_line(text: str) -> str:
    """Header text on one line: control characters (CR and LF among them, which would start a
    new header) and runs of white space become one space, none at the ends."""
    return " ".join(text.translate(_CONTROLS).split())


def header_safe(text: str) -> bool:
    """Whether typed text may go into a header as it is: no control character (CR and LF among
    them) and no Unicode line or paragraph separator, which some readers show as a new line."""
    # Printable text has none of them (the common case, answered in C); else look closer.
    return text.isprintable() or not any(unicodedata.category(ch) in _LINE_BREAKING for ch in text)


def needs_encoding(text: str) -> bool:
    """RFC 2047 1: headers are ASCII, so anything else goes into encoded-words; so does ASCII
    text holding "=?", which a decoder could take for the start of one (RFC 2047 6.1)."""
    return not text.isascii() or "=?" in text


def encoded_words(text: str, *, indent: int = 0) -> str:
    """RFC 2047 B encoded-words of at most 75 characters, one per line of at most 78; the first
    fits after `indent` characters (the field name and ": ").

    Decoders drop the white space between adjacent encoded-words (RFC 2047 6.2), so each split
    falls just after a space of the text where one is near, and the space travels inside the
    word. Each word holds whole characters (RFC 2047 5), never half of a UTF-8 sequence.
    """
    chunks: list[str] = []
    room = _word_bytes(LINE_LIMIT - indent)
    start = size = 0
    last_space = -1
    for i, char in enumerate(text):
        width = len(char.encode())
        if size + width > room:
            cut = last_space + 1 if last_space >= start else i
            carried = len(text[cut:i].encode())
            if carried + width > _NEXT_WORD_BYTES:  # the words after the space do not fit
                cut, carried = i, 0
            chunks.append(text[start:cut])
            start, size, room = cut, carried, _NEXT_WORD_BYTES
        if char == " ":
            last_space = i
        size += width
    chunks.append(text[start:])
    return "\r\n ".join(
        f"=?utf-8?b?{binascii.b2a_base64(c.encode(), newline=False).decode()}?="
        for c in chunks
        if c
    )


def _word_bytes(line_room: int) -> int:
    """How many UTF-8 bytes one B encoded-word carries in `line_room` characters."""
    return (min(line_room, WORD_LIMIT) - _WORD_FRAME) // 4 * 3


_NEXT_WORD_BYTES = _word_bytes(LINE_LIMIT - 1)  # a continuation line starts with a space


def fold_at_spaces(text: str, *, indent: int) -> str | None:
    """`text` folded at its spaces (RFC 5322 2.2.3: unfolding gives the text back) so that no
    line passes 78 characters; None when one word alone would not fit."""
    if indent + len(text) <= LINE_LIMIT:
        return text
    lines: list[str] = []
    line = ""
    room = LINE_LIMIT - indent
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) <= room:
            line += " " + word
            continue
        if line:
            lines.append(line)
            room = LINE_LIMIT - 1
        if len(word) > room:
            return None
        line = word
    lines.append(line)
    return "\r\n ".join(lines)


def unstructured(text: str, *, indent: int) -> str:
    """An unstructured value such as a Subject (RFC 5322 3.2.5), on one line after cleaning:
    ASCII stays readable, folded between words; anything else becomes encoded-words."""
    text = one_line(text)
    if not needs_encoding(text):
        folded = fold_at_spaces(text, indent=indent)
        if folded is not None:
            return folded
    return encoded_words(text, indent=indent)


def mailbox(name: str, address: str, *, indent: int) -> str:
    """`display-name <address>` (RFC 5322 3.4; also a List-Id, RFC 2919), or the bare address
    when there is no name. `name` must be one_line() already: this runs per recipient, and an
    ASCII name that fits costs one regex search."""
    if not name:
        return address
    phrase = None
    if not needs_encoding(name):
        quoted = _quoted(name) if _SPECIALS.search(name) else name
        if indent + len(quoted) + len(address) + 3 <= LINE_LIMIT:
            return f"{quoted} <{address}>"
        phrase = fold_at_spaces(quoted, indent=indent)  # FWS may fold a quoted-string too
    if phrase is None:
        phrase = encoded_words(name, indent=indent)
    return _then_address(phrase, address, indent)


def _quoted(name: str) -> str:
    """RFC 5322 3.2.4 quoted-string: backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _then_address(phrase: str, address: str, indent: int) -> str:
    """The <address> after a folded phrase: on its last line if it fits, else on a new one."""
    last = phrase.rsplit("\r\n", 1)[-1]
    used = len(last) if "\r\n" in phrase else indent + len(last)
    separator = " " if used + len(address) + 3 <= LINE_LIMIT else "\r\n "
    return f"{phrase}{separator}<{address}>"


def sender(settings: Settings) -> str:
    """The From value: display name (RFC 2047-encoded when not ASCII) and address."""
    return mailbox(one_line(settings.from_name), settings.from_address, indent=len("From: "))


def recipient(address: str, name: str = "") -> str:
    """The To value: the reader's name, when known, and address."""
    return mailbox(one_line(name), address, indent=len("To: "))


def date_value(zone: dt.tzinfo, when: float | None = None) -> str:
    """RFC 5322 3.3 date-time in `zone` with its real offset at that moment (DST included);
    "-0000" would say that the sender's zone is unknown. `when`: seconds since the epoch."""
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, zone)
    return email.utils.format_datetime(moment)


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
    # Folded and encoded as in the column mail, and stored as written: Python 3.11's own folder
    # raises IndexError on some long names and leaves ASCII "=?" text for decoders to misread.
    msg.set_raw("From", sender(settings))
    msg.set_raw("To", recipient(to, to_name))
    msg.set_raw("Subject", unstructured(rendered.subject, indent=len("Subject: ")))
    msg["Date"] = date_value(settings.tz)
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


@dataclass(frozen=True)
class ReadBack:
    """A built message as a mail program shows it: the decoded subject and both parts."""

    subject: str
    text: str
    html: str


def read_back(data: bytes) -> ReadBack:
    """Decode a message we built (for previews): subject, text part and HTML part."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    parts = {
        kind: part.get_content() if (part := msg.get_body(preferencelist=(kind,))) else ""
        for kind in ("plain", "html")
    }
    return ReadBack(str(msg.get("subject", "")), parts["plain"], parts["html"])

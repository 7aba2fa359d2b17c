"""A transactional mail rendered once and spliced per recipient: Jinja2 and CSS inlining run
once per process with markers where the recipient's values go; each message is then a few
string replacements, the C quoted-printable encoder and its own headers."""

from __future__ import annotations

import binascii
import functools
import html
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address

from ..config import Settings
from .message import Rendered, date_value, message_id, recipient, sender, unstructured


@dataclass(frozen=True)
class Prototype:
    """One mail's bodies, quoted-printable encoded once with a gap for each personal value,
    and its fixed headers."""

    settings: Settings
    subject: str
    text: _Encoded
    html: _Encoded

    @classmethod
    def of(cls, settings: Settings, rendered: Rendered, markers: Mapping[str, str]) -> Prototype:
        """The prototype of a mail rendered with `markers` (value name -> marker) in place of
        the personal values."""
        return cls(
            settings,
            rendered.subject,
            _Encoded.of(rendered.text, markers, escape=False),
            _Encoded.of(rendered.html, markers, escape=True),
        )

    @functools.cached_property
    def _from(self) -> str:
        return f"From: {sender(self.settings)}"

    @functools.cached_property
    def _subject(self) -> str:
        return f"Subject: {unstructured(self.subject, indent=len('Subject: '))}"

    def message(self, *, to: str, to_name: str = "", **values: str) -> bytes:
        """The whole message for one recipient (CRLF, headers and bodies), as message.build
        and to_bytes would write it for the same values, up to encoding choices."""
        boundary = f"=_{secrets.token_hex(12)}"
        head = [
            self._from,
            f"To: {recipient(to, to_name)}",
            self._subject,
            f"Date: {date_value(self.settings.tz)}",
            f"Message-ID: {message_id(self.settings.mail_domain)}",
        ]
        if self.settings.reply_to:
            head.append(f"Reply-To: {Address(addr_spec=self.settings.reply_to)}")
        head += [
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        return b"".join(
            (
                "\r\n".join(head).encode("ascii"),
                b"\r\n\r\n",
                _part_head(boundary, "plain"),
                self.text.spliced(values),
                b"\r\n",  # RFC 2046 5.1.1: the line end before a boundary belongs to it
                _part_head(boundary, "html"),
                self.html.spliced(values),
                b"\r\n",
                f"--{boundary}--\r\n".encode("ascii"),
            )
        )


@dataclass(frozen=True)
class _Encoded:
    """A body in quoted-printable, in pieces encoded once, with the name of the value that
    goes between each two. Each value is encoded on its own, on lines of its own joined by
    soft line breaks (RFC 2045 6.7 rule 5), so no line passes 76 characters and the body
    decodes to the text with the values in place."""

    pieces: tuple[bytes, ...]
    names: tuple[str, ...]
    escape: bool  # HTML: values are escaped as Jinja2's autoescape would

    @classmethod
    def of(cls, body: str, markers: Mapping[str, str], *, escape: bool) -> _Encoded:
        text = body.replace("\r\n", "\n").replace("\r", "\n")
        if not text.endswith("\n"):
            text += "\n"
        pattern = re.compile("|".join(re.escape(marker) for marker in markers.values()))
        named = {marker: name for name, marker in markers.items()}
        parts = pattern.split(text)
        pieces = [
            _soft_ended(_qp(part)) if at < len(parts) - 1 and not part.endswith("\n") else _qp(part)
            for at, part in enumerate(parts)
        ]
        names = tuple(named[marker] for marker in pattern.findall(text))
        return cls(tuple(pieces), names, escape)

    def spliced(self, values: Mapping[str, str]) -> bytes:
        out = [self.pieces[0]]
        for name, piece in zip(self.names, self.pieces[1:], strict=True):
            value = html.escape(values[name], quote=True) if self.escape else values[name]
            if value:
                out.append(_soft_ended(_qp(value)))
            out.append(piece)
        return b"".join(out)


def _part_head(boundary: str, subtype: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii")


def _qp(text: str) -> bytes:
    """Quoted-printable of `text` (LF line ends) with CRLF line ends, lines of at most 76."""
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def _soft_ended(encoded: bytes) -> bytes:
    """`encoded`, which ends mid-line, with a soft line break after it: its last line is cut
    first where it would pass 76 characters with the "=", never inside an "=XX"."""
    head, crlf, last = encoded.rpartition(b"\r\n")
    lines = []
    while len(last) > 75:
        cut = 75
        while last[cut - 1 : cut] == b"=" or last[cut - 2 : cut - 1] == b"=":
            cut -= 1
        lines.append(last[:cut] + b"=")
        last = last[cut:]
    lines.append(last + b"=")
    return head + crlf + b"\r\n".join(lines) + b"\r\n"


def quoted_printable(body: str) -> bytes:
    """RFC 2045 6.7 quoted-printable of `body` with CRLF line ends, lines of at most 76."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    return _qp(text if text.endswith("\n") else text + "\n")


def markers_for(names: Sequence[str]) -> dict[str, str]:
    """A marker per value name: letters and digits only, so escaping and the CSS inliner
    keep it as it is, and random, so no template text can hold one by chance."""
    nonce = secrets.token_hex(8)
    return {name: f"zq{nonce}x{at}qz" for at, name in enumerate(names)}

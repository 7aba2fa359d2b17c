"""One mail's splice: a mail rendered, inlined and encoded once (`PreparedMail`), and each
reader's copy built from it by filling in their few values, dot-stuffed for SMTP DATA and
DKIM-signed from parts canonicalised once. Generic (it knows no column), and light: a builder
process imports this, the token signer and the DKIM signer, not the settings or the database."""

from __future__ import annotations

import binascii
import datetime as dt
import functools
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, Unpack

from .dkim import DkimSigner, canonical_headers, canonical_lines
from .message import date_value, mailbox, one_line
from .wire import END_OF_DATA, Stuffed, stuff_lines

# The reader's values, each with the one-letter field name used in the per-line format strings.
PERSONAL_FIELDS = {
    "name": "n",
    "email": "e",
    "unsubscribe_url": "u",
    "feedback_url": "f",
    "preferences_url": "p",
}

# What may not appear in a URL, an address or a Message-ID that we put in a header: anything
# outside visible ASCII (CR/LF would inject headers; non-ASCII is not allowed unencoded) and
# the characters that end a <URI> or an HTML attribute.
_HEADER_UNSAFE = re.compile(r'[^\x21-\x7e]|[<>"]')


def _qp(lines: Sequence[str]) -> bytes:
    """Quoted-printable for whole lines with CRLF ends; lines ≤ 76 (binascii, in C)."""
    return binascii.b2a_qp(("\r\n".join(lines) + "\r\n").encode("utf-8"))


@dataclass(frozen=True)
class _Body:
    """One body part, pre-encoded: bytes for runs of lines without a marker, and for each line
    with a marker a str.format template ({n}, {e}, {u}, {f}, {p}) to fill and encode per
    reader.

    Quoted-printable encodes every hard line on its own, so encoding the filled line alone
    gives exactly the bytes that encoding the whole body would give there, soft breaks included.
    """

    pieces: tuple[bytes | str, ...]
    # The relaxed DKIM form of each static piece, computed once (None for the reader's lines).
    canonical: tuple[bytes | None, ...]
    # Each static piece dot-stuffed for SMTP DATA, once (None for the reader's lines).
    stuffed: tuple[bytes | None, ...]

    def encode(self, values: Mapping[str, str]) -> list[bytes]:
        """Each piece's bytes for one reader (join them for the part)."""
        return [
            p if isinstance(p, bytes) else binascii.b2a_qp((p.format_map(values) + "\r\n").encode())
            for p in self.pieces
        ]

    def stuff(self, encoded: list[bytes]) -> list[bytes]:
        """The same pieces as they go on the wire: only the reader's few lines are stuffed
        now (a value can start a soft-broken line with "."); the rest was stuffed once."""
        return [
            stuff_lines(piece) if done is None else done
            for piece, done in zip(encoded, self.stuffed, strict=True)
        ]

    def digest_into(self, hasher: Any, encoded: list[bytes]) -> None:
        """Feed the DKIM body hash with this part as encoded for one reader: pieces end at line
        ends, so each canonicalises alone; only the reader's few lines cost anything."""
        for canonical, piece in zip(self.canonical, encoded, strict=True):
            hasher.update(canonical if canonical is not None else canonical_lines(piece))

    def static_size(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else 3 * len(p) for p in self.pieces)


def compile_body(body: str, markers: Mapping[str, str], nonce: str) -> _Body:
    pieces: list[bytes | str] = []
    static: list[str] = []
    for line in body[:-1].split("\n"):
        if nonce not in line:
            static.append(line)
            continue
        if static:
            pieces.append(_qp(static))
            static = []
        template = line.replace("{", "{{").replace("}", "}}")
        for marker, code in markers.items():
            template = template.replace(marker, "{" + code + "}")
        if nonce in template:  # a filter changed a marker: the splice would lose the value
            raise ValueError(f"a personal value was altered by the template: {line!r}")
        pieces.append(template)
    if static:
        pieces.append(_qp(static))
    canonical = tuple(canonical_lines(p) if isinstance(p, bytes) else None for p in pieces)
    stuffed = tuple(stuff_lines(p) if isinstance(p, bytes) else None for p in pieces)
    return _Body(tuple(pieces), canonical, stuffed)


def require_values(body: _Body, codes: str, part: str) -> None:
    filled = "".join(p for p in body.pieces if isinstance(p, str))
    for code in codes:
        if "{" + code + "}" not in filled:
            raise ValueError(f"the {part} template does not show the reader's {code!r} value")


# What html5ever (inside css-inline) writes for a text node and for an attribute value, so that
# a value spliced into the inlined HTML reads exactly as if it had been rendered there.
def _escape_text(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("\xa0", "&nbsp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


def _escape_attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace('"', "&quot;")


@dataclass(frozen=True)
class Variant:
    """The two bodies for one greeting form (with a name, or the generic one)."""

    text: _Body
    html: _Body


class ReaderValues(TypedDict):
    """One reader's values for their copy of the column or digest."""

    to: str
    name: str
    unsubscribe_url: str
    feedback_url: str
    preferences_url: str
    message_id: str
    date_header: NotRequired[str | None]  # default: now, in TIMEZONE
    unsubscribe_mailto: NotRequired[str | None]  # when a receiver reads unsubscribe mail
    signer: NotRequired[DkimSigner | None]


@dataclass(frozen=True)
class PreparedMail:
    """A mail (a column, a digest) rendered, inlined and encoded once; `message_bytes` builds
    each reader's copy."""

    named: Variant
    anonymous: Variant
    head_from: str  # From: … CRLF
    head_subject: str  # Subject: … CRLF (folded)
    head_list: str  # Reply-To, List-Id: lines before List-Unsubscribe
    head_fields: bytes  # List-Unsubscribe-Post … Content-Type: the rest of the header block
    body_start: bytes  # after the blank line: the first boundary and the text part's headers
    html_separator: bytes  # boundary and the HTML part's headers
    closing: bytes
    boundary: str
    zone: dt.tzinfo  # TIMEZONE: the Date header's offset

    def message_bytes(self, **reader: Unpack[ReaderValues]) -> bytes:
        """The whole mail for one reader, CRLF throughout, ready for SMTP DATA (and signed,
        when a signer is given, over exactly these bytes). `unsubscribe_mailto` is the
        reader's own unsubscribe address for List-Unsubscribe, when a receiver reads it."""
        return b"".join(self._build(**reader).pieces())

    def stuffed(self, **reader: Unpack[ReaderValues]) -> Stuffed:
        """`message_bytes` as SMTP DATA carries it (dot-stuffed, closed with ".\r\n"), built
        from pieces stuffed once per column: the send path hands it over without a rescan."""
        built = self._build(**reader)
        size = sum(map(len, built.pieces()))
        return Stuffed(b"".join(built.pieces(stuffed=True)) + END_OF_DATA, size)

    def _build(
        self,
        *,
        to: str,
        name: str,
        unsubscribe_url: str,
        feedback_url: str,
        preferences_url: str,
        message_id: str,
        date_header: str | None = None,
        unsubscribe_mailto: str | None = None,
        signer: DkimSigner | None = None,
    ) -> _Built:
        name = one_line(name)
        if not (message_id.startswith("<") and message_id.endswith(">")):
            message_id = f"<{message_id}>"
        mailto = unsubscribe_mailto or ""
        checked = f"{to}{unsubscribe_url}{feedback_url}{preferences_url}{message_id[1:-1]}{mailto}"
        if _HEADER_UNSAFE.search(checked):
            raise ValueError('address, URLs and Message-ID must be visible ASCII without <>"')
        if date_header is None:
            date_header = _date_header(int(time.time()), self.zone)
        elif "\r" in date_header or "\n" in date_header:
            raise ValueError("the Date header must be one line")
        to_line = f"To: {_to_header(to, name)}\r\n".encode("ascii")
        stamp_lines = f"Date: {date_header}\r\nMessage-ID: {message_id}\r\n".encode("ascii")
        unsubscribe = _list_unsubscribe(unsubscribe_url, unsubscribe_mailto).encode("ascii")
        head = b"".join(
            (self._head[0], to_line, self._head[1], stamp_lines, self._head[2], unsubscribe)
        )
        text = {"n": name, "e": to, "u": unsubscribe_url, "f": feedback_url, "p": preferences_url}
        html = {
            "n": _escape_text(name),
            "e": _escape_text(to),
            "u": _escape_attribute(unsubscribe_url),
            "f": _escape_attribute(feedback_url),
            "p": _escape_attribute(preferences_url),
        }
        variant = self.named if name else self.anonymous
        built = _Built(self, variant, head, variant.text.encode(text), variant.html.encode(html))
        if signer is not None:
            hasher = hashlib.sha256()
            hasher.update(self._canonical[0])
            variant.text.digest_into(hasher, built.text)
            hasher.update(self._canonical[1])
            variant.html.digest_into(hasher, built.html)
            hasher.update(self._canonical[2])
            # The fixed fields' relaxed form was computed once; only the reader's four now.
            to_c, date_c, id_c, unsubscribe_c = canonical_headers(
                to_line + stamp_lines + unsubscribe
            )
            sender_c, subject_c, list_c, fields_c = self._canonical_head
            canonical = [
                *sender_c,
                to_c,
                *subject_c,
                date_c,
                id_c,
                *list_c,
                unsubscribe_c,
                *fields_c,
            ]
            built.signature = signer.signature_of_canonical(canonical, hasher.digest())
        return built

    @functools.cached_property
    def _head(self) -> tuple[bytes, bytes, bytes]:
        """The fixed header lines around the reader's own: From; Subject; Reply-To, List-Id."""
        return (
            self.head_from.encode("ascii"),
            self.head_subject.encode("ascii"),
            self.head_list.encode("ascii"),
        )

    @functools.cached_property
    def _canonical_head(self) -> tuple[list[tuple[bytes, bytes]], ...]:
        """The relaxed DKIM form of the fixed header fields, in the order `_build` writes
        them: From; Subject; Reply-To and List-Id; List-Unsubscribe-Post to Content-Type."""
        return (
            *(canonical_headers(part) for part in self._head),
            canonical_headers(self.head_fields),
        )

    @functools.cached_property
    def _canonical(self) -> tuple[bytes, bytes, bytes]:
        """The relaxed DKIM form of the body's fixed parts: start, separator, closing."""
        return (
            canonical_lines(self.body_start),
            canonical_lines(self.html_separator),
            canonical_lines(self.closing),
        )


@dataclass
class _Built:
    """One reader's mail in pieces, as plain message bytes or as stuffed for DATA."""

    mail: PreparedMail
    variant: Variant
    head: bytes
    text: list[bytes]
    html: list[bytes]
    signature: bytes = b""

    def pieces(self, *, stuffed: bool = False) -> list[bytes]:
        c, text, html = self.mail, self.text, self.html
        if stuffed:  # the header block cannot start a line with "." but the reader's To: is
            text, html = self.variant.text.stuff(text), self.variant.html.stuff(html)
            return [
                stuff_lines(self.signature + self.head),  # typed in: checked, never trusted
                c.head_fields,
                b"\r\n",
                c.body_start,
                *text,
                c.html_separator,
                *html,
                c.closing,
            ]
        return [
            self.signature,
            self.head,
            c.head_fields,
            b"\r\n",
            c.body_start,
            *text,
            c.html_separator,
            *html,
            c.closing,
        ]


def _list_unsubscribe(url: str, mailto: str | None) -> str:
    """RFC 2369/8058: the HTTPS URI, and the mailto: one when a receiver reads it. Never
    encoded; if long, folded only between the two URIs, because a provider reads a URI cut by
    folding or hidden in an encoded-word as no URI at all."""
    if len(url) + 21 > 998:  # "List-Unsubscribe: <" + url + ">,"
        raise ValueError("the unsubscribe URL is too long for a header line")
    if mailto is None:
        return f"List-Unsubscribe: <{url}>\r\n"
    second = f"<mailto:{mailto}?subject=unsubscribe>"
    line = f"List-Unsubscribe: <{url}>, {second}\r\n"
    if len(line) <= 80:  # 78 characters + CRLF
        return line
    return f"List-Unsubscribe: <{url}>,\r\n {second}\r\n"


def _to_header(address: str, name: str) -> str:
    """Per reader, so cheap for an ASCII name; `name` is one_line()'d already."""
    return mailbox(name, address, indent=len("To: "))


@functools.lru_cache(maxsize=4)
def _date_header(second: int, zone: dt.tzinfo) -> str:
    """The Date value for a second in a zone; cached, as a whole batch goes out within the
    same few seconds (the zone is in the key: two sends may use two zones)."""
    return date_value(zone, second)

"""The newsletter's mails (the daily column, the weekly digest): render and encode once per
mail, splice each reader's values per message, built on the generic mail primitives (message
headers, the SMTP-ready bytes). The one place of the splice machinery; digest.py says what a
digest shows."""

from __future__ import annotations

import binascii
import datetime as dt
import functools
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict, Unpack

from ..config import TEMPLATES_DIR, Settings
from ..mail.dkim import DkimSigner, canonical_headers, canonical_lines
from ..mail.message import date_value, mailbox, one_line, sender, unstructured
from ..mail.render import environment, inline_css, site_globals
from ..mail.smtp import Stuffed, stuff_lines
from .model import ParsedColumn
from .store import slug_for
from .view import ColumnView

# Gmail clips an HTML part past ~102 KB behind "[Message clipped]", hiding the footer with the
# unsubscribe link. Measured on the quoted-printable bytes (larger than the decoded HTML).
HTML_PART_LIMIT = 100_000
# Room for the longest personal values a reader may add to the HTML part.
PERSONAL_ALLOWANCE = 2_000

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


class ColumnTooLarge(ValueError):
    """The HTML part would be clipped by Gmail; the column (or digest) must be shortened."""


class Personal(TypedDict):
    """One reader's values as the templates show them (PERSONAL_FIELDS)."""

    name: str
    email: str
    unsubscribe_url: str
    feedback_url: str
    preferences_url: str


@dataclass(frozen=True)
class MailContent:
    """What one newsletter mail shows to every reader alike, and the headers that say so."""

    template: str  # email/NAME.txt and email/NAME.html
    context: Mapping[str, object]  # what the templates show besides the site and the reader
    subject: str
    campaign: str  # the Feedback-ID's first fields (e.g. "2016-02-04:column")


def render_column(
    view: ColumnView,
    settings: Settings,
    *,
    templates_dir: Path = TEMPLATES_DIR,
    **personal: Unpack[Personal],
) -> tuple[str, str]:
    """(text, html) for one reader, rendered the slow way; the spliced message must decode to it."""
    return render_reference(column_content(view, settings), settings, personal, templates_dir)


def render_reference(
    content: MailContent, settings: Settings, personal: Personal, templates_dir: Path
) -> tuple[str, str]:
    """(text, html) of `content` for one reader, rendered the slow way: what the spliced
    message must decode to."""
    values: dict[str, object] = {**personal, "name": one_line(personal["name"])}
    return _render(content, settings, values, templates_dir)


def _render(
    content: MailContent, settings: Settings, personal: Mapping[str, object], templates_dir: Path
) -> tuple[str, str]:
    env = environment(templates_dir)
    context = {**content.context, **site_globals(settings), **personal}
    text = env.get_template(f"email/{content.template}.txt").render(context)
    html = inline_css(env.get_template(f"email/{content.template}.html").render(context))
    return _normalize(text), _normalize(html)


def _normalize(body: str) -> str:
    """LF line ends, no trailing spaces, exactly one final newline."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    return "\n".join(line.rstrip() for line in lines) + "\n"


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


def _compile(body: str, markers: Mapping[str, str], nonce: str) -> _Body:
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


def _require(body: _Body, codes: str, part: str) -> None:
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


def _ascii(header: str) -> str:
    """Headers go out as ASCII (no SMTPUTF8): text is RFC 2047-encoded before it gets here."""
    if not header.isascii():
        raise ValueError(f"header is not ASCII: {header!r}")
    return header


def _list_id(identifier: str) -> str:
    """List-Id (RFC 2919): an optional phrase, RFC 2047-encoded when not ASCII, then <id>."""
    match = re.fullmatch(r"\s*(.*?)\s*<([^<>\s]+)>\s*", identifier)
    phrase, list_id = (match.group(1), match.group(2)) if match else ("", identifier.strip())
    phrase = one_line(phrase)
    if not phrase:
        return f"List-Id: <{list_id}>\r\n"
    return f"List-Id: {mailbox(phrase, list_id, indent=len('List-Id: '))}\r\n"


@dataclass(frozen=True)
class _Variant:
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

    named: _Variant
    anonymous: _Variant
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
        return Stuffed(b"".join(built.pieces(stuffed=True)) + b".\r\n", size)

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


# The name the worker and the tests knew it by: a digest is prepared into the same class.
PreparedColumn = PreparedMail


@dataclass
class _Built:
    """One reader's mail in pieces, as plain message bytes or as stuffed for DATA."""

    mail: PreparedMail
    variant: _Variant
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


def _subject_header(title: str) -> str:
    """Subject folded between words (never right after the colon, which leaves readers a
    leading space), or RFC 2047 encoded-words when the title is not ASCII: once per mail."""
    return f"Subject: {unstructured(title, indent=len('Subject: '))}\r\n"


def _to_header(address: str, name: str) -> str:
    """Per reader, so cheap for an ASCII name; `name` is one_line()'d already."""
    return mailbox(name, address, indent=len("To: "))


@functools.lru_cache(maxsize=4)
def _date_header(second: int, zone: dt.tzinfo) -> str:
    """The Date value for a second in a zone; cached, as a whole batch goes out within the
    same few seconds (the zone is in the key: two sends may use two zones)."""
    return date_value(zone, second)


def prepare_column(
    view: ColumnView, settings: Settings, *, templates_dir: Path = TEMPLATES_DIR
) -> PreparedMail:
    """Render both templates with markers, inline the CSS and QP-encode: once per column."""
    return prepare_mail(column_content(view, settings), settings, templates_dir=templates_dir)


def column_content(view: ColumnView, settings: Settings) -> MailContent:
    """The daily column's mail: its own title as the Subject, its links at BASE_URL."""
    view = view.at(settings.base_url)
    return MailContent("column", {"column": view}, view.title, f"{view.date.isoformat()}:column")


def prepare_mail(
    content: MailContent, settings: Settings, *, templates_dir: Path = TEMPLATES_DIR
) -> PreparedMail:
    """Render `content` with markers for the reader's values, inline the CSS and QP-encode:
    once per mail, however many readers get it. ColumnTooLarge if Gmail would clip it."""
    nonce = secrets.token_hex(8)
    markers = {f"brdsd{code}{nonce}": code for code in PERSONAL_FIELDS.values()}
    by_field = {key: f"brdsd{code}{nonce}" for key, code in PERSONAL_FIELDS.items()}
    named = _prepare_variant(content, settings, by_field, markers, nonce, templates_dir)
    anonymous = _prepare_variant(
        content, settings, {**by_field, "name": ""}, markers, nonce, templates_dir
    )
    size = max(named.html.static_size(), anonymous.html.static_size()) + PERSONAL_ALLOWANCE
    if size > HTML_PART_LIMIT:
        raise ColumnTooLarge(f"the HTML part is about {size} bytes; Gmail clips past 100 KB")
    # "=_" never occurs in quoted-printable ("=" is always "=3D" or a soft break), so the
    # boundary cannot appear in either body, whatever the mail or the reader's values.
    boundary = f"=_wv_{secrets.token_hex(16)}"
    part = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable'
    return PreparedMail(
        named=named,
        anonymous=anonymous,
        head_from=_ascii(f"From: {sender(settings)}\r\n"),
        head_subject=_subject_header(content.subject),
        head_list=_ascii(_head_list(settings)),
        head_fields=_head_fields(content, settings, boundary).encode("ascii"),
        body_start=f"--{boundary}\r\n{part.format('plain')}\r\n\r\n".encode("ascii"),
        html_separator=f"\r\n--{boundary}\r\n{part.format('html')}\r\n\r\n".encode("ascii"),
        closing=f"\r\n--{boundary}--\r\n".encode("ascii"),
        boundary=boundary,
        zone=settings.tz,
    )


def _head_list(settings: Settings) -> str:
    """Reply-To (when configured) and List-Id."""
    reply_to = f"Reply-To: {settings.reply_to}\r\n" if settings.reply_to else ""
    return reply_to + _list_id(settings.list_identifier)


def _head_fields(content: MailContent, settings: Settings, boundary: str) -> str:
    """The fixed header fields after List-Unsubscribe, through the multipart Content-Type."""
    return (
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        f"Feedback-ID: {content.campaign}:world-view:{settings.mail_domain}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
    )


def _prepare_variant(
    content: MailContent,
    settings: Settings,
    personal: Mapping[str, str],
    markers: Mapping[str, str],
    nonce: str,
    templates_dir: Path,
) -> _Variant:
    text, html = _render(content, settings, personal, templates_dir)
    variant = _Variant(_compile(text, markers, nonce), _compile(html, markers, nonce))
    needed = "eufp" + ("n" if personal["name"] else "")
    _require(variant.text, needed, "text")
    _require(variant.html, needed, "HTML")
    return variant


def mail_size_check(settings: Settings) -> Callable[[ParsedColumn], None]:
    """The check that a column can be mailed: rendered as a reader would get it, its HTML part
    must stay under Gmail's clipping limit (the unsubscribe link sits at the end). Raises
    ValueError naming the size."""

    def check(parsed: ParsedColumn) -> None:
        assert parsed.date is not None
        try:
            view = ColumnView.from_parsed(parsed, slug=slug_for(parsed.date, parsed.title))
            prepare_column(view, settings)
        except ColumnTooLarge as exc:
            raise ValueError(f"too large to mail: {exc}; shorten the column") from exc

    return check

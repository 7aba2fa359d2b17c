"""The newsletter's mails (the daily column, the weekly digest): rendered with markers for
each reader's values, inlined and encoded once per mail into a PreparedMail (mail/splice.py,
which splices each reader's values per message). digest.py says what a digest shows."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from ..config import TEMPLATES_DIR, Settings
from ..mail.message import mailbox, one_line, sender, unstructured
from ..mail.render import environment, inline_css, site_globals
from ..mail.splice import (
    PERSONAL_FIELDS,
    PreparedMail,
    Variant,
    compile_body,
    require_values,
)
from .model import ParsedColumn
from .store import slug_for
from .view import ColumnView

# Gmail clips an HTML part past ~102 KB behind "[Message clipped]", hiding the footer with the
# unsubscribe link. Measured on the quoted-printable bytes (larger than the decoded HTML).
HTML_PART_LIMIT = 100_000
# Room for the longest personal values a reader may add to the HTML part.
PERSONAL_ALLOWANCE = 2_000


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


# The name the worker and the tests knew it by: a digest is prepared into the same class.
PreparedColumn = PreparedMail


def _subject_header(title: str) -> str:
    """Subject folded between words (never right after the colon, which leaves readers a
    leading space), or RFC 2047 encoded-words when the title is not ASCII: once per mail."""
    return f"Subject: {unstructured(title, indent=len('Subject: '))}\r\n"


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
) -> Variant:
    text, html = _render(content, settings, personal, templates_dir)
    variant = Variant(compile_body(text, markers, nonce), compile_body(html, markers, nonce))
    needed = "eufp" + ("n" if personal["name"] else "")
    require_values(variant.text, needed, "text")
    require_values(variant.html, needed, "HTML")
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

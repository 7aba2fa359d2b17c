"""/dev/outbox: the mails the embedded capture server kept, for development without a relay.
Only mounted in development (BROADSIDE_ENV) when no SMTP_URL is set."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ..errors import NotFound
from ..mail import capture
from .deps import SettingsDep
from .templating import page

router = APIRouter(prefix="/dev/outbox", include_in_schema=False)
HEAD_RE = re.compile(r"<head[^>]*>", re.IGNORECASE)


@router.get("", response_class=HTMLResponse)
def outbox(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The captured mails, newest first."""
    return page(request, "dev_outbox", mails=capture.listing(settings.outbox_dir))


def _mail(settings: SettingsDep, name: str) -> capture.CapturedMail:
    mail = capture.read(settings.outbox_dir, name)
    if mail is None:
        raise NotFound(name)
    return mail


@router.get("/{name}", response_class=HTMLResponse)
def outbox_mail(request: Request, name: str, settings: SettingsDep) -> HTMLResponse:
    """One captured mail: headers, text, and the HTML in a sandboxed frame."""
    mail = _mail(settings, name)
    mail_headers = [(k, str(v)) for k, v in mail.message.items()]
    return page(
        request,
        "dev_outbox_mail",
        mail=mail,
        mail_headers=mail_headers,
        text=mail.part("plain"),
        html=_framed(mail.part("html")),
    )


def _framed(html: str | None) -> str | None:
    """The HTML part for the viewer's sandboxed srcdoc frame (no script, no same-origin
    access; the page's policy forbids framing any URL of ours): links open in the window."""
    if html is None:
        return None
    return HEAD_RE.sub(lambda m: m.group(0) + '<base target="_top">', html, count=1)


@router.get("/{name}/raw")
def outbox_mail_raw(name: str, settings: SettingsDep) -> Response:
    """One captured mail's raw bytes."""
    path = settings.outbox_dir / _mail(settings, name).name
    return Response(path.read_bytes(), media_type="text/plain; charset=utf-8")

"""/dev/outbox: the mails the embedded capture server kept, for development without a relay.
Only mounted when no SMTP_URL is set."""

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
    return page(request, "dev_outbox", mails=capture.listing(settings.outbox_dir))


def _mail(settings: SettingsDep, name: str) -> capture.CapturedMail:
    mail = capture.read(settings.outbox_dir, name)
    if mail is None:
        raise NotFound(name)
    return mail


@router.get("/{name}", response_class=HTMLResponse)
def outbox_mail(request: Request, name: str, settings: SettingsDep) -> HTMLResponse:
    mail = _mail(settings, name)
    mail_headers = [(k, str(v)) for k, v in mail.message.items()]
    return page(
        request,
        "dev_outbox_mail",
        mail=mail,
        mail_headers=mail_headers,
        text=mail.part("plain"),
        has_html=mail.part("html") is not None,
    )


@router.get("/{name}/html")
def outbox_mail_html(name: str, settings: SettingsDep) -> Response:
    """The HTML part alone, for the viewer's iframe; links open in the whole window."""
    html = _mail(settings, name).part("html")
    if html is None:
        raise NotFound(name)
    html = HEAD_RE.sub(lambda m: m.group(0) + '<base target="_top">', html, count=1)
    return HTMLResponse(html)


@router.get("/{name}/raw")
def outbox_mail_raw(name: str, settings: SettingsDep) -> Response:
    path = settings.outbox_dir / _mail(settings, name).name
    return Response(path.read_bytes(), media_type="text/plain; charset=utf-8")

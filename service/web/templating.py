"""The page renderer: Jinja2 (autoescaped) over templates/pages with the site's globals."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..config import TEMPLATES_DIR, Settings
from ..mail.render import site_globals


def make_templates(settings: Settings) -> Jinja2Templates:
    """The pages' renderer, with the same site globals as the mails."""
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    templates.env.globals.update(site_globals(settings))
    return templates


def page(
    request: Request,
    name: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render templates/pages/NAME.html as the response, with the site's globals."""
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request, f"pages/{name}.html", context, status_code=status_code, headers=headers
    )

"""The page renderer: Jinja2 (autoescaped) over templates/pages with the site's globals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..config import TEMPLATES_DIR, Settings
from ..mail.render import site_globals


def make_templates(settings: Settings, directory: Path = TEMPLATES_DIR) -> Jinja2Templates:
    """The pages' renderer, with the same site globals as the mails. Autoescaped as Starlette
    does it; a template is read once, except in development, where an edited one shows on
    the next request (elsewhere, a stat of its file on every page cost ~6 % of the event
    loop's time under load)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=jinja2.select_autoescape(),
        auto_reload=settings.env == "development",
    )
    templates = Jinja2Templates(env=env)
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

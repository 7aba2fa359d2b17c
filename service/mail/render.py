"""Jinja2 for transactional mails: NAME.txt (which sets the subject) and NAME.html."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import css_inline
import jinja2

from ..config import TEMPLATES_DIR, Settings
from .message import Rendered


def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    """Autoescape for .html, none for .txt (plain text is not HTML)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


class MailTemplates:
    """Renders `email/NAME.txt` (which sets `subject`) and `email/NAME.html`."""

    def __init__(self, settings: Settings, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.settings = settings
        self.env = environment(templates_dir)

    @cached_property
    def _inliner(self) -> css_inline.CSSInliner:
        return css_inline.CSSInliner(keep_style_tags=True)

    def render(self, template: str, /, **context: Any) -> Rendered:
        context = {
            "site_name": self.settings.from_name,
            "base_url": self.settings.base_url,
            "postal_address": self.settings.postal_address,
            **context,
        }
        text_module = self.env.get_template(f"email/{template}.txt").make_module(context)
        subject = " ".join(str(getattr(text_module, "subject", self.settings.from_name)).split())
        html = self.env.get_template(f"email/{template}.html").render(context, subject=subject)
        return Rendered(
            subject=subject, text=str(text_module).lstrip("\n"), html=self._inliner.inline(html)
        )

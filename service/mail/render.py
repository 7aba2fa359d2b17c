"""The one Jinja2 environment and the one CSS inliner for mail; transactional mails render
through MailTemplates (NAME.txt, which sets the subject, and NAME.html)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import css_inline
import jinja2

from ..config import TEMPLATES_DIR, Settings
from .message import Rendered
from .prototype import Prototype, markers_for


def site_globals(settings: Settings) -> dict[str, str]:
    """What every page and mail may show of the site: its name, addresses and postal address."""
    return {
        "site_name": settings.from_name,
        "base_url": settings.base_url,
        "subscribe_url": settings.base_url + "/",
        "postal_address": settings.postal_address,
    }


@functools.lru_cache(maxsize=4)
def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    """The mail templates: autoescape for .html, none for .txt (plain text is not HTML); block
    tags leave no blank lines behind. Shared, so it carries no settings: pass site_globals."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# Every rule inlined into style attributes, only the @media rules (phones) kept in <head>:
# mail clients drop <style> blocks unevenly, and nothing is ever fetched from the network.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def inline_css(html: str) -> str:
    """`html` with its CSS moved into style attributes, as mail clients need it."""
    return _INLINER.inline(html)


class MailTemplates:
    """Renders `email/NAME.txt` (which sets `subject`) and `email/NAME.html`."""

    def __init__(self, settings: Settings, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.settings = settings
        self.env = environment(templates_dir)
        self.site = site_globals(settings)
        self._prototypes: dict[tuple[str, tuple[str, ...], tuple[Any, ...]], Prototype] = {}

    def render(self, template: str, /, **values: Any) -> Rendered:
        """The mail's subject and both bodies, the HTML with its CSS inlined."""
        context = {**self.site, **values}
        text_module = self.env.get_template(f"email/{template}.txt").make_module(context)
        subject = " ".join(str(getattr(text_module, "subject", self.settings.from_name)).split())
        html = self.env.get_template(f"email/{template}.html").render(context, subject=subject)
        return Rendered(subject=subject, text=str(text_module).lstrip("\n"), html=inline_css(html))

    def prototype(self, template: str, /, personal: tuple[str, ...], **fixed: Any) -> Prototype:
        """The mail rendered once per process with markers for the `personal` values (the
        same `fixed` values for everybody); Prototype.message splices each recipient's in."""
        key = (template, personal, tuple(sorted(fixed.items())))
        found = self._prototypes.get(key)
        if found is None:
            markers = markers_for(personal)
            rendered = self.render(template, **fixed, **markers)
            found = Prototype.of(self.settings, rendered, markers)
            self._prototypes[key] = found
        return found

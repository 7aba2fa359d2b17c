"""The page renderer reads a template once, except in development."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import load_settings
from service.web.templating import make_templates


@pytest.mark.parametrize(("env", "reloads"), [("production", False), ("development", True)])
def test_an_edited_page_template_shows_only_in_development(
    tmp_path: Path, env: str, reloads: bool
) -> None:
    settings = load_settings(
        _env_file=None,
        var_dir=tmp_path / "var",
        env=env,
        secret_key="s" * 32,
        smtp_url="smtp://127.0.0.1:2525",
    )
    pages = tmp_path / "templates"
    (pages / "pages").mkdir(parents=True)
    page = pages / "pages" / "hello.html"
    page.write_text("<p>Hello {{ who }}</p>")
    templates = make_templates(settings, pages)
    assert (
        templates.get_template("pages/hello.html").render(who="<Ada>") == "<p>Hello &lt;Ada&gt;</p>"
    )

    page.write_text("<p>Goodbye {{ who }}</p>")
    later = page.stat().st_mtime + 10
    os.utime(page, (later, later))
    again = templates.get_template("pages/hello.html").render(who="Ada")
    assert again == ("<p>Goodbye Ada</p>" if reloads else "<p>Hello Ada</p>")

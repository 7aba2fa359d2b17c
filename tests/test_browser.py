"""A newcomer in a real browser: subscribe, read the mail at /dev/outbox, confirm, unsubscribe."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from sqlalchemy.engine import Engine

from service.web.app import create_app
from tests.conftest import make_settings
from tests.helpers import eventually, reader
from tests.web.live import base_url_of, listening, serving

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
MAIL_TIMEOUT = 10.0  # seconds for the outbox sender to hand the mail to the capture server
READER = "newcomer@example.com"


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "Debian's chromium is not installed: run `apt-get install chromium` "
            "to enable the browser test"
        )
    with sync_playwright() as playwright:
        # Debian's build, never a downloaded one: `playwright install` is not part of setup.
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def open_confirmation_mail(page: Page, base_url: str) -> None:
    """Reload /dev/outbox until the confirmation mail is listed, then open it."""
    mail_link = page.get_by_role("link", name="Confirm your subscription to World View")
    page.goto(f"{base_url}/dev/outbox")

    def listed() -> bool:
        if mail_link.count():
            return True
        page.reload()
        return False

    assert eventually(listed, MAIL_TIMEOUT, every=0.1), (
        "the confirmation mail never reached /dev/outbox"
    )
    mail_link.click()


def test_newcomer_subscribes_confirms_and_unsubscribes_in_a_browser(
    browser: Browser, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    listener = listening()
    base_url = base_url_of(listener)
    settings = make_settings(database_url, tmp_path / "var", capture_port=0, base_url=base_url)
    app = create_app(settings, engine, scheduler=False)
    page = browser.new_page()
    page.set_default_timeout(5_000)
    refused: list[str] = []  # what the security policy blocked, as Chromium reports it

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            refused.append(message.text)

    page.on("console", on_console)

    with serving(app, settings, listener):
        page.goto(f"{base_url}/")
        page.get_by_label("E-mail address").fill(READER)
        page.get_by_label("Name").fill("Nia")
        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

        open_confirmation_mail(page, base_url)
        mail = page.frame_locator('iframe[title="HTML part of the mail"]')
        # The mail is shown from srcdoc, since no page of ours may be framed, and its links
        # target _top: the click leaves the viewer for the confirm page.
        mail.get_by_role("link", name="Confirm my subscription").click()
        page.wait_for_url(f"{base_url}/confirm/**")
        expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
        expect(page.get_by_text(READER)).to_be_visible()
        assert reader(engine, READER).status == "pending", "opening the link must not confirm"
        screenshot = page.screenshot(path=tmp_path / "confirm.png", full_page=True)
        assert screenshot.startswith(b"\x89PNG") and (tmp_path / "confirm.png").stat().st_size

        page.get_by_role("button", name="Confirm subscription").click()
        expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
        assert reader(engine, READER).status == "active"

        subscriber = reader(engine, READER)
        assert subscriber.id is not None
        page.goto(app.state.ctx.links.unsubscribe_url(subscriber.id))
        expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
        assert reader(engine, READER).status == "active", "opening the link must not unsubscribe"

        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading", name="You're unsubscribed")).to_be_visible()
        assert reader(engine, READER).status == "unsubscribed"
    assert refused == [], "nothing on these pages breaks the security policy"

"""A reader in a real browser: the subscribe form takes the browser's time zone, and saving
another zone on the preferences page moves the next delivery shown; nothing on the way breaks
the security policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, expect
from sqlalchemy.engine import Engine

from service.db import transaction
from service.models import Subscriber, SubscriberStatus
from service.web.app import create_app
from tests.conftest import make_settings
from tests.helpers import reader
from tests.test_browser import browser  # noqa: F401  (the fixture: Debian's chromium)
from tests.web.live import base_url_of, listening, serving

pytestmark = pytest.mark.browser

READER = "traveller@example.com"
BROWSER_ZONE = "Asia/Tokyo"  # what the browser says it is in: no daylight saving, predictable
NEW_ZONE = "America/Los_Angeles"


def activate(engine: Engine, email: str) -> int:
    """What confirming does (the mail round trip is test_browser.py's)."""
    with transaction(engine) as session:
        subscriber = session.get(Subscriber, reader(engine, email).id)
        assert subscriber is not None and subscriber.id is not None
        subscriber.status = SubscriberStatus.active
        session.add(subscriber)
        return subscriber.id


def test_the_browser_fills_the_zone_and_a_new_zone_moves_the_next_delivery(
    browser: Browser,  # noqa: F811
    database_url: str,
    engine: Engine,
    tmp_path: Path,
) -> None:
    listener = listening()
    base_url = base_url_of(listener)
    settings = make_settings(database_url, tmp_path / "var", capture_port=0, base_url=base_url)
    app = create_app(settings, engine, scheduler=False)
    context = browser.new_context(timezone_id=BROWSER_ZONE)
    page = context.new_page()
    page.set_default_timeout(5_000)
    refused: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            refused.append(message.text)

    page.on("console", on_console)

    with serving(app, settings, listener):
        page.goto(f"{base_url}/")
        expect(page.locator('input[name="timezone"]')).to_have_value(BROWSER_ZONE)
        page.get_by_label("E-mail address").fill(READER)
        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
        assert reader(engine, READER).timezone == BROWSER_ZONE

        page.goto(app.state.ctx.links.preferences_url(activate(engine, READER)))
        next_delivery = page.locator("#next-delivery")
        expect(next_delivery).to_contain_text(f"06:00 ({BROWSER_ZONE})")
        expect(page.get_by_label("Time zone")).to_have_value(BROWSER_ZONE)
        before = next_delivery.inner_text()

        page.get_by_label("Time zone").select_option(NEW_ZONE)
        page.get_by_role("button", name="Save").click()

        expect(page.get_by_text("Saved.")).to_be_visible()
        expect(next_delivery).to_contain_text(f"06:00 ({NEW_ZONE})")
        assert next_delivery.inner_text() != before
        assert reader(engine, READER).timezone == NEW_ZONE
    context.close()
    assert refused == [], "nothing on these pages breaks the security policy"

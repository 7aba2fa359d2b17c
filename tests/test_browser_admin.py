"""An operator in a real browser: sign in, upload a column, preview it, mail a test copy,
start the send, watch its counts move without a reload, pause it (they stop), resume it
and watch it finish; pick a week, preview its digest and mail a test copy; nothing on the
way breaks the security policy or throws."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.db import transaction
from service.delivery import digests
from service.models import Cadence, Send
from service.web.app import create_app
from tests.conftest import SEED, make_settings
from tests.daily import add_readers
from tests.delivery.test_digest_send import MONDAY, add_columns, title
from tests.delivery.test_digest_send import add_reader as add_weekly_reader
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer
from tests.test_browser import browser  # noqa: F401  (the fixture: Debian's chromium)
from tests.web.live import base_url_of, listening, serving

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
READERS = 300
RATE = 20  # messages a second: the send takes about 15 s, long enough to pause it
EDITOR = "editor@example.org"


def counter(page: Page, field: str) -> int:
    """A number in the live panel, as the page shows it now."""
    return int(page.locator(f'section.live [data-field="{field}"]').inner_text())


def send_status(engine: Engine) -> str:
    with Session(engine) as session:
        return str(session.exec(select(Send)).one().status)


def operator_settings(
    database_url: str, tmp_path: Path, smtp_url: str, base_url: str, **more: object
) -> Settings:
    """The dashboard's settings at `base_url`, with columns only from uploads or the test."""
    (tmp_path / "columns").mkdir()
    return make_settings(
        database_url,
        tmp_path / "var",
        base_url=base_url,
        smtp_url=smtp_url,
        admin_password=PASSWORD,
        columns_dir=tmp_path / "columns",
        **more,
    )


def watched_page(chromium: Browser, *, failing: tuple[str, ...] = ()) -> tuple[Page, list[str]]:
    """A new page and the problems it meets: policy violations, script errors and failed
    loads (but the favicon's, and those of the URLs in `failing`, refused on purpose)."""
    page = chromium.new_page()
    page.set_default_timeout(10_000)
    problems: list[str] = []
    expected = ("favicon", *failing)

    def on_console(message: ConsoleMessage) -> None:
        refused = "Content Security Policy" in message.text or "Refused to" in message.text
        failed = message.type == "error" and not any(
            part in message.location["url"] for part in expected
        )
        if refused or failed:
            problems.append(message.text)

    def on_error(error: Error) -> None:
        problems.append(f"uncaught: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_error)
    return page, problems


def test_an_operator_uploads_tests_sends_pauses_and_resumes_a_column_in_a_browser(
    browser: Browser,  # noqa: F811
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
) -> None:
    add_readers(engine, active=READERS)
    listener = listening()
    base_url = base_url_of(listener)
    settings = operator_settings(  # the column comes from the upload, not from a folder
        database_url,
        tmp_path,
        smtp_server.url,
        base_url,
        delivery_rate=RATE,
        # Few rows claimed ahead, so that a pause takes effect within a second or so.
        delivery_batch_size=10,
        resume_interval=1,
    )
    app = create_app(settings, engine, scheduler=True)  # its heal delivers what is started
    page, problems = watched_page(browser)

    with serving(app, settings, listener):
        page.goto(f"{base_url}/admin")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()

        page.get_by_role("navigation").get_by_role("link", name="Columns").click()
        page.get_by_label("Column file").set_input_files(SEED)
        page.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("status")).to_contain_text("Column of 2016-02-04 created")
        expect(page.get_by_role("heading", level=1)).to_contain_text("Syria Peace Talks")
        mail = page.frame_locator('iframe[title="The column\'s mail as a reader sees it"]')
        expect(mail.get_by_text("Staffan de Mistura").first).to_be_visible()

        page.get_by_label("Send a test copy to").fill(EDITOR)
        page.get_by_role("button", name="Send test copy").click()
        expect(page.get_by_role("status")).to_contain_text(f"Test copy sent to {EDITOR}")
        [copy] = smtp_server.wait_for(1, to=EDITOR)
        assert "Syria" in str(copy.message["Subject"])

        page.get_by_role("button", name=re.compile(r"^Send now to 300 readers")).click()
        expect(page.get_by_role("status")).to_contain_text("Send started for 300 readers")
        send_page = page.url
        page.evaluate("window.notReloaded = true")  # gone if the page were loaded again

        # The heal picks the send up within RESUME_INTERVAL; the script shows it going out.
        assert eventually(lambda: counter(page, "sent") >= 20, timeout=20, every=0.2)
        before = counter(page, "sent")
        time.sleep(2)
        assert counter(page, "sent") > before, "the counts move on the page by themselves"
        assert page.url == send_page and page.evaluate("window.notReloaded === true")
        expect(page.locator('section.live [data-field="rate"]')).not_to_have_text("0.0")

        page.get_by_role("button", name="Pause").click()
        expect(page.locator('section.live [data-field="status"]')).to_have_text("paused")
        assert send_status(engine) == "paused"
        time.sleep(3)  # the hand-offs in progress finish
        paused_at = counter(page, "sent")
        time.sleep(3)
        assert counter(page, "sent") == paused_at < READERS, "nothing goes out while paused"
        expect(page.get_by_role("button", name="Pause")).to_be_hidden()

        page.get_by_role("button", name="Resume").click()
        expect(page.locator('section.live [data-field="status"]')).to_have_text(
            re.compile("sending|done")
        )
        expect(page.locator('section.live [data-field="status"]')).to_have_text(
            "done", timeout=60_000
        )
        expect(page.locator('section.live [data-field="sent"]')).to_have_text(str(READERS))
        expect(page.locator('section.live [data-field="remaining"]')).to_have_text("0")
        assert counter(page, "failed") == 0
        assert send_status(engine) == "done"

    assert len(smtp_server.received) == READERS + 1  # each reader once, and the test copy
    assert problems == [], "no policy violation, script error or failed load on any page"


def test_an_operator_previews_a_weeks_digest_and_mails_a_test_copy_in_a_browser(
    browser: Browser,  # noqa: F811
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
) -> None:
    add_columns(engine, [MONDAY, MONDAY + dt.timedelta(days=3)])
    add_weekly_reader(engine, "weekly@example.com", Cadence.weekly)
    listener = listening()
    base_url = base_url_of(listener)
    settings = operator_settings(database_url, tmp_path, smtp_server.url, base_url)
    with transaction(engine) as session:  # the week's digest send, as the scheduler starts it
        assert digests.start_week(session, settings, "2026-W48", dt.datetime(2026, 11, 23))
    app = create_app(settings, engine, scheduler=False)
    page, problems = watched_page(browser, failing=("/admin/digests/2026-W47",))  # a 404

    with serving(app, settings, listener):
        page.goto(f"{base_url}/admin/digests/2026-W48")  # admin-only: the sign-in first
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Digest, week 2026-W48")

        page.get_by_role("navigation").get_by_role("link", name="Columns").click()
        page.get_by_label("Week", exact=True).fill("2026-W47")  # the browser's own week picker
        page.get_by_role("button", name="Preview its digest").click()
        expect(page.get_by_role("alert")).to_contain_text("There is no column in 2026-W47")
        page.get_by_label("Week", exact=True).fill("2026-W48")
        page.get_by_role("button", name="Preview its digest").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Digest, week 2026-W48")
        mail = page.frame_locator('iframe[title="The digest as a weekly reader sees it"]')
        thursday = title(MONDAY + dt.timedelta(days=3))
        expect(mail.get_by_role("heading", name=thursday)).to_be_visible()

        page.get_by_label("Send a test copy to").fill(EDITOR)
        page.get_by_role("button", name="Send test copy").click()
        expect(page.get_by_role("status")).to_contain_text(f"Test copy sent to {EDITOR}")
        [copy] = smtp_server.wait_for(1, to=EDITOR)
        assert "your week" in str(copy.message["Subject"])

        page.get_by_role("navigation").get_by_role("link", name="Sends").click()
        page.get_by_role("link", name="Digest, week 2026-W48").click()
        expect(page).to_have_url(f"{base_url}/admin/digests/2026-W48")

    assert [mail.rcpt_tos for mail in smtp_server.received] == [[EDITOR]]
    assert problems == [], "no policy violation, script error or failed load on any page"

"""A transactional mail rendered once and spliced per recipient reads exactly as the same mail
rendered and built the slow way (Jinja2, CSS inlining and EmailMessage for every message)."""

from __future__ import annotations

import email.policy
import html
from email.message import EmailMessage
from pathlib import Path

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.context import build_context
from service.mail.message import build, to_bytes
from tests.conftest import make_settings

SETTINGS = make_settings("sqlite://", Path("/nonexistent"), reply_to="editor@news.example.com")
CTX = build_context(SETTINGS)
PERSONAL = ("email", "confirm_url")


def parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> tuple[str, str]:
    plain, rich = (msg.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
    assert plain is not None and rich is not None
    return str(plain.get_content()), str(rich.get_content())


def slow(to: str, to_name: str, confirm_url: str) -> EmailMessage:
    rendered = CTX.mail.render("confirm", email=to, confirm_url=confirm_url, valid_days=7)
    return parsed(to_bytes(build(SETTINGS, to=to, to_name=to_name, rendered=rendered)))


def spliced(to: str, to_name: str, confirm_url: str) -> EmailMessage:
    prototype = CTX.mail.prototype("confirm", PERSONAL, valid_days=7)
    return parsed(prototype.message(to=to, to_name=to_name, email=to, confirm_url=confirm_url))


LOCAL = st.text(st.sampled_from("abcxyz09.+-_'&=!#{}|~"), min_size=1, max_size=40)
TOKEN = st.text(st.sampled_from("abcXYZ019-_."), min_size=1, max_size=120)
NAME = st.text(max_size=60).map(
    lambda s: " ".join(s.translate({c: " " for c in range(32)}).split())
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(local=LOCAL, name=NAME, token=TOKEN)
def test_a_spliced_confirmation_reads_as_the_slow_one(local: str, name: str, token: str) -> None:
    to, url = f"{local}@example.com", f"https://news.example.com/confirm/{token}"
    fast, reference = spliced(to, name, url), slow(to, name, url)
    for header in ("From", "To", "Subject", "Reply-To"):
        assert str(fast[header]) == str(reference[header]), header
    fast_text, fast_html = parts(fast)
    text, page = parts(reference)
    assert fast_text == text
    # The inliner writes a few characters bare that escaping writes as entities: the same page.
    assert html.unescape(fast_html) == html.unescape(page)


def test_every_line_of_a_spliced_message_fits_the_smtp_limits() -> None:
    prototype = CTX.mail.prototype("confirm", PERSONAL, valid_days=7)
    long_url = "https://news.example.com/confirm/" + "x" * 300
    data = prototype.message(to="a@example.com", email="a@example.com", confirm_url=long_url)
    lines = data.split(b"\r\n")
    assert all(len(line) <= 78 for line in lines) and b"\n" not in data.replace(b"\r\n", b"")
    assert parts(parsed(data))[0].count(long_url) == 1

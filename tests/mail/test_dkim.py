"""DKIM: every mail that leaves is signed over the bytes that leave, verifies with dkimpy
against the published record (RSA and Ed25519), and stops verifying when any signed header
or one body byte changes, or a second From is put in front."""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import hypothesis
import pytest
from dkim.canonicalization import compress_whitespace, strip_trailing_whitespace
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from service.columns.mail import PreparedColumn, prepare_column
from service.columns.view import ColumnView
from service.config import TEMPLATES_DIR, ConfigError, DkimKey, Settings, load_settings
from service.mail import dkim as signing
from service.mail.dkim import DkimSigner
from tests import processes
from tests.columns.test_mail import FEEDBACK, PREFERENCES, UNSUBSCRIBE, seed_like_column
from tests.conftest import make_settings
from tests.daily import add_readers, run_job
from tests.smtp_server import SmtpTestServer

DOMAIN = "example.com"  # the from-address domain of the test settings
SIGNED_HEADERS = [
    "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "List-Id",
    "List-Unsubscribe", "List-Unsubscribe-Post",
]  # fmt: skip


@pytest.fixture(scope="module")
def rsa_key() -> DkimKey:
    return signing.new_key("rsa")


@pytest.fixture(scope="module")
def ed25519_key() -> DkimKey:
    return signing.new_key("ed25519")


@pytest.fixture
def dkim_settings(tmp_path: Path, rsa_key: DkimKey, ed25519_key: DkimKey) -> dict[str, object]:
    """Settings that sign with both keys, each written as the operator would (a PEM file)."""
    signing.write_key(rsa_key, tmp_path / "rsa.pem")
    signing.write_key(ed25519_key, tmp_path / "ed.pem")
    return {
        "dkim_domain": DOMAIN,
        "dkim_selector": "s2026",
        "dkim_private_key": str(tmp_path / "rsa.pem"),
        "dkim_selector_ed25519": "e2026",
        "dkim_private_key_ed25519": str(tmp_path / "ed.pem"),
    }


@pytest.fixture
def dns(rsa_key: DkimKey, ed25519_key: DkimKey) -> Callable[..., bytes | None]:
    return published_dns(rsa_key, ed25519_key)


def published_dns(rsa_key: DkimKey, ed25519_key: DkimKey) -> Callable[..., bytes | None]:
    """dkimpy's DNS look-up, answered with the records `broadside dkim generate` prints."""
    published = {
        f"s2026._domainkey.{DOMAIN}.": signing.public_record(rsa_key),
        f"e2026._domainkey.{DOMAIN}.": signing.public_record(ed25519_key),
    }

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        record = published.get(name.decode())
        return record.encode() if record else None

    return lookup


def signatures(message: bytes) -> list[bytes]:
    """The a= tag of each DKIM-Signature, in order."""
    return re.findall(rb"^DKIM-Signature:.*?\ba=([\w-]+);", message, re.M | re.S)


def verifies(message: bytes, dns: Callable[..., bytes | None]) -> list[bool]:
    """Whether each DKIM signature on `message` verifies."""
    checker = dkim.DKIM(message)

    def one(index: int) -> bool:
        try:
            return bool(checker.verify(idx=index, dnsfunc=dns))
        except dkim.ValidationError:  # a body hash that does not match is raised, not False
            return False

    return [one(i) for i in range(len(signatures(message)))]


def prepared(settings: Settings) -> PreparedColumn:
    view = ColumnView.from_parsed(seed_like_column(), slug="2016-02-04-syria")
    return prepare_column(view, settings, templates_dir=TEMPLATES_DIR)


def column_message(settings: Settings, signer: DkimSigner | None, name: str = "Ada") -> bytes:
    return prepared(settings).message_bytes(
        to="ada@example.com",
        name=name,
        unsubscribe_url=UNSUBSCRIBE,
        feedback_url=FEEDBACK,
        preferences_url=PREFERENCES,
        message_id="<column.1@example.com>",
        signer=signer,
    )


@pytest.fixture
def signed_settings(tmp_path: Path, dkim_settings: dict[str, object]) -> Settings:
    return make_settings("sqlite://", tmp_path / "var", **dkim_settings)


def test_delivered_column_verifies_with_rsa_and_ed25519(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    dkim_settings: dict[str, object],
    dns: Callable[..., bytes | None],
) -> None:
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, **dkim_settings
    )
    add_readers(engine, active=2)
    run_job(engine, settings)
    for mail in smtp_server.wait_for(2):
        assert signatures(mail.data) == [b"rsa-sha256", b"ed25519-sha256"]
        assert verifies(mail.data, dns) == [True, True]
        assert dkim.verify(mail.data, dnsfunc=dns)


def test_confirmation_mail_is_signed_too(
    make_client: Callable[..., TestClient],
    smtp_server: SmtpTestServer,
    dkim_settings: dict[str, object],
    dns: Callable[..., bytes | None],
) -> None:
    client = make_client(**dkim_settings)
    assert client.post("/subscribe", data={"email": "zoe@example.org"}).status_code == 200
    (mail,) = smtp_server.wait_for(1)
    assert verifies(mail.data, dns) == [True, True]


def test_signature_covers_the_headers_rfc_8058_asks_for_and_oversigns_from(
    signed_settings: Settings,
) -> None:
    message = column_message(signed_settings, DkimSigner.from_settings(signed_settings))
    for tags in re.findall(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", message, re.M | re.S):
        h = re.search(rb"\bh=([^;]*);", tags)
        assert h is not None
        signed = [name.strip().lower() for name in re.sub(rb"\s", b"", h.group(1)).split(b":")]
        assert {n.lower().encode() for n in SIGNED_HEADERS} <= set(signed)
        assert signed.count(b"from") == 2
        assert b"c=relaxed/relaxed" in tags


@pytest.mark.parametrize("header", SIGNED_HEADERS)
def test_changing_any_signed_header_breaks_both_signatures(
    header: str, signed_settings: Settings, dns: Callable[..., bytes | None]
) -> None:
    message = column_message(signed_settings, DkimSigner.from_settings(signed_settings))
    assert verifies(message, dns) == [True, True]
    changed, count = re.subn(
        rb"^(" + header.encode() + rb": ?)(.)", rb"\1X\2", message, count=1, flags=re.M | re.I
    )
    assert count == 1
    assert verifies(changed, dns) == [False, False]


def test_one_changed_body_byte_or_a_second_from_breaks_both_signatures(
    signed_settings: Settings, dns: Callable[..., bytes | None]
) -> None:
    message = column_message(signed_settings, DkimSigner.from_settings(signed_settings))
    at = message.index(b"Aleppo", message.index(b"\r\n\r\n"))
    one_byte = message[:at] + b"B" + message[at + 1 :]
    assert verifies(one_byte, dns) == [False, False]
    second_from = b"From: Mallory <boss@example.com>\r\n" + message
    assert verifies(second_from, dns) == [False, False]


# Names that put whitespace where relaxed canonicalisation changes it: runs of spaces and
# tabs, trailing blanks, characters quoted-printable encodes.
NAMES = st.text(
    alphabet=st.sampled_from(list("Ab  \t\t=.é王ß-")) | st.characters(codec="utf-8"),
    max_size=40,
)


@hypothesis.settings(max_examples=60, deadline=None)
@given(name=NAMES)
def test_body_hash_is_over_the_exact_bytes_sent_for_any_name(name: str) -> None:
    """The column's body hash is put together from pieces canonicalised once per column; for
    any reader's name it equals dkimpy's hash of the whole body as sent."""
    settings = make_settings("sqlite://", Path("/nonexistent-var"))
    key = signing.new_key("ed25519")
    signer = DkimSigner(DOMAIN, [signing._Key(b"s", b"ed25519-sha256", key)])
    message = column_message(settings, signer, name=name)
    signed_body = message.split(b"\r\n\r\n", 1)[1]
    bh = re.search(rb"\bbh=([^;]+);", message)
    assert bh is not None
    assert base64.b64decode(bh.group(1)) == signing.body_digest(signed_body)


def test_without_dkim_settings_mail_goes_out_unsigned(tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path / "var")
    assert DkimSigner.from_settings(settings) is None
    assert signatures(column_message(settings, None)) == []


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"dkim_domain": DOMAIN}, "DKIM"),
        ({"dkim_private_key": "/nonexistent/key.pem"}, "DKIM_PRIVATE_KEY"),
        ({"dkim_domain": "not a domain", "dkim_selector": "s"}, "DKIM_DOMAIN"),
    ],
)
def test_incomplete_or_unreadable_dkim_settings_are_a_one_line_error(
    overrides: dict[str, str], variable: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, var_dir=tmp_path, **overrides)
    assert str(info.value).startswith("BROADSIDE_DKIM_") and variable in str(info.value)
    assert "\n" not in str(info.value)


def test_an_ed25519_key_given_as_the_rsa_key_is_refused(
    tmp_path: Path, ed25519_key: DkimKey
) -> None:
    signing.write_key(ed25519_key, tmp_path / "ed.pem")
    with pytest.raises(ConfigError, match="BROADSIDE_DKIM_PRIVATE_KEY: must be an RSA"):
        load_settings(
            _env_file=None,
            var_dir=tmp_path,
            dkim_domain=DOMAIN,
            dkim_selector="s",
            dkim_private_key=str(tmp_path / "ed.pem"),
        )


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkim_generate_writes_a_private_key_and_prints_the_record_that_verifies(
    kind: str, tmp_path: Path
) -> None:
    env = processes.environment("sqlite://", tmp_path / "var", "smtp://127.0.0.1:1")
    flag = ["--ed25519"] if kind == "ed25519" else []
    result = processes.run(
        "dkim", "generate", "--domain", "news.example.org", "--selector", "k1", *flag, env=env
    )
    assert result.returncode == 0, result.stderr
    key_file = tmp_path / "var" / "dkim" / f"k1._domainkey.news.example.org.{kind}.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    line = next(x for x in result.stdout.splitlines() if x.startswith("k1._domainkey."))
    record = "".join(re.findall(r'"([^"]*)"', line))
    assert f"k={kind}" in record
    assert "v=spf1" in result.stdout and "v=DMARC1" in result.stdout
    assert f"BROADSIDE_DKIM_PRIVATE_KEY{'_ED25519' if kind == 'ed25519' else ''}=" in result.stdout

    settings = make_settings(
        "sqlite://",
        tmp_path / "var",
        from_address="news@news.example.org",
        dkim_domain="news.example.org",
        **(
            {"dkim_selector_ed25519": "k1", "dkim_private_key_ed25519": str(key_file)}
            if kind == "ed25519"
            else {"dkim_selector": "k1", "dkim_private_key": str(key_file)}
        ),
    )
    message = column_message(settings, DkimSigner.from_settings(settings))

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return record.encode() if name == b"k1._domainkey.news.example.org." else None

    assert verifies(message, lookup) == [True]

    again = processes.run(
        "dkim", "generate", "--domain", "news.example.org", "--selector", "k1", *flag, env=env
    )
    assert again.returncode != 0 and "exists already" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_dkim_generate_refuses_a_bad_domain_in_one_line(tmp_path: Path) -> None:
    env = processes.environment("sqlite://", tmp_path / "var", "smtp://127.0.0.1:1")
    result = processes.run("dkim", "generate", "--domain", "a b", "--selector", "k", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: --domain")


@hypothesis.settings(max_examples=40, deadline=None)
@given(name=NAMES)
def test_the_whole_signature_verifies_for_any_name(name: str) -> None:
    """The fixed headers are canonicalised once per column and the reader's own per message;
    whatever the name does to the To: field (encoded-words, folding), both keys verify."""
    rsa, ed = _KEYS
    settings = make_settings("sqlite://", Path("/nonexistent-var"))
    signer = DkimSigner(
        DOMAIN,
        [signing._Key(b"s2026", b"rsa-sha256", rsa), signing._Key(b"e2026", b"ed25519-sha256", ed)],
    )
    lookup = published_dns(rsa, ed)
    assert verifies(column_message(settings, signer, name=name), lookup) == [True, True]


_KEYS = (signing.new_key("rsa"), signing.new_key("ed25519"))


# Header values as they may be written: words, runs of blanks, tabs, and folding.
HEADER_TEXT = st.lists(
    st.sampled_from(["Ab", " ", "  ", "\t", ":", "-=", "\r\n ", "\r\n\t"]), max_size=20
).map("".join)


@hypothesis.settings(max_examples=300)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["To", "Date", "X-a", "subject"]), HEADER_TEXT),
        min_size=1,
        max_size=4,
    )
)
def test_quick_header_canonicalisation_agrees_with_dkimpy(lines: list[tuple[str, str]]) -> None:
    head = "".join(f"{name}:{value}\r\n" for name, value in lines).encode()
    hypothesis.assume(not head.startswith((b" ", b"\t")))
    expected = signing.RELAXED.canonicalize_headers(signing.header_fields(head))
    assert signing.canonical_headers(head) == expected


@hypothesis.settings(max_examples=300)
@given(text=st.text(st.sampled_from(list("ab =\t")), max_size=80))
def test_quick_body_line_canonicalisation_agrees_with_dkimpy(text: str) -> None:
    lines = (text.replace("=", "\r\n") + "\r\n").encode()
    expected = compress_whitespace(strip_trailing_whitespace(lines))
    assert signing.canonical_lines(lines) == expected

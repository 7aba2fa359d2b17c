"""Mail that spam filters score clean: SpamAssassin's local rules (no network) on the seed
column, the confirmation mail and the "already subscribed" notice, each as the test relay
received it, signed with RSA-2048 and Ed25519 DKIM keys for the From domain."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.config import Settings
from service.mail.dkim import new_key, public_record, write_key
from tests.conftest import make_settings
from tests.daily import add_readers, run_job
from tests.helpers import add_reader
from tests.smtp_server import Received, SmtpTestServer

SPAMASSASSIN = shutil.which("spamassassin")
needs_spamassassin = pytest.mark.skipif(
    SPAMASSASSIN is None,
    reason="needs Debian's spamassassin (.ci/run installs it when it is missing)",
)
# What goes out does not depend on the database: checking it once, on SQLite, is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

READER = "reader@example.com"
MAX_SCORE = 1.0
MAX_COLUMN_BYTES = 100 * 1024
# Rules about our own making: MIME structure, HTML-only mail, missing headers, dates, and text
# hard to read against its background. Rules named __… are sub-rules and never listed.
FORBIDDEN = re.compile(
    r"MIME_|MPART_ALT_DIFF|HTML_ONLY|MISSING_|DATE_IN_PAST_|DATE_IN_FUTURE_|INVALID_DATE"
    r"|LOW_CONTRAST"
)
# Each rule that fired with its score; SpamAssassin's own X-Spam-Status has names only.
RULES_HEADER = "add_header all Rules _TESTSSCORES(,)_"


@dataclass(frozen=True)
class Verdict:
    score: float
    rules: dict[str, float]  # every rule that fired, with its points

    def report(self, what: str) -> str:
        lines = [f"SpamAssassin -L on {what}: score {self.score} (must stay under {MAX_SCORE})"]
        lines += [f"  {points:7.3f}  {name}" for name, points in sorted(self.rules.items())]
        return "\n".join(lines)


def spamassassin(data: bytes, home: Path) -> Verdict:
    """SpamAssassin's local tests (-L: no DNS, no network) on `data`, as its headers say."""
    assert SPAMASSASSIN is not None
    home.mkdir(exist_ok=True)
    done = subprocess.run(
        [SPAMASSASSIN, "-L", "-t", f"--cf={RULES_HEADER}", "--cf=use_bayes 0"],
        input=data,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},  # its user state goes there, not into ~
    )
    assert done.returncode == 0, done.stderr.decode()
    checked = message_from_bytes(done.stdout, policy=policy.compat32)
    status = " ".join(str(checked["X-Spam-Status"]).split())
    found = re.search(r"score=(-?\d+(?:\.\d+)?)", status)
    assert found and checked["X-Spam-Rules"] is not None, (
        f"no verdict in SpamAssassin's headers: {status!r}\n{done.stderr.decode()}"
    )
    listed = "".join(str(checked["X-Spam-Rules"]).split())
    rules = {
        name: float(points)
        for name, points in (item.split("=") for item in listed.split(",") if item)
    }
    return Verdict(float(found.group(1)), rules)


def assert_scores_clean(mail: Received, what: str, home: Path) -> None:
    verdict = spamassassin(mail.data, home)
    print(verdict.report(what))  # shown by pytest when the test fails
    ours = sorted(name for name in verdict.rules if FORBIDDEN.search(name))
    assert verdict.score < MAX_SCORE and not ours, (
        f"{verdict.report(what)}\nrules about our own mail: {ours or 'none'}"
    )


def assert_signed_with_both_keys(mail: Received, records: dict[bytes, str]) -> None:
    """Two DKIM-Signature headers, RSA and Ed25519, that verify against the published keys."""
    signatures = [str(s) for s in mail.message.get_all("DKIM-Signature") or []]
    algorithms = sorted(tag for s in signatures for tag in re.findall(r"(?:^|;)\s*a=([\w-]+)", s))
    assert algorithms == ["ed25519-sha256", "rsa-sha256"], signatures

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return records[name].encode()

    checker = dkim.DKIM(mail.data)
    for index in range(2):
        assert checker.verify(idx=index, dnsfunc=dns), f"signature {index} does not verify"


@dataclass(frozen=True)
class Signing:
    overrides: dict[str, object]  # the DKIM settings
    records: dict[bytes, str]  # DNS name -> TXT record, as the operator publishes them


@pytest.fixture
def signing(settings: Settings, tmp_path: Path) -> Signing:
    """Fresh RSA-2048 and Ed25519 keys for the From address's domain."""
    domain = settings.mail_domain
    rsa, ed25519 = new_key("rsa"), new_key("ed25519")
    write_key(rsa, tmp_path / "dkim" / "rsa.pem")
    write_key(ed25519, tmp_path / "dkim" / "ed25519.pem")
    return Signing(
        overrides={
            "dkim_domain": domain,
            "dkim_selector": "mail",
            "dkim_private_key": str(tmp_path / "dkim" / "rsa.pem"),
            "dkim_selector_ed25519": "mail-ed",
            "dkim_private_key_ed25519": str(tmp_path / "dkim" / "ed25519.pem"),
        },
        records={
            f"mail._domainkey.{domain}.".encode(): public_record(rsa),
            f"mail-ed._domainkey.{domain}.".encode(): public_record(ed25519),
        },
    )


@pytest.fixture
def delivered_column(
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    signing: Signing,
) -> Received:
    """The seed column as the daily send delivered it to one reader, signed."""
    signed = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, **signing.overrides
    )
    add_readers(engine, active=1)
    run_job(engine, signed)
    [mail] = smtp_server.wait_for(1)
    return mail


@needs_spamassassin
def test_delivered_column_scores_clean_with_spamassassin(
    delivered_column: Received, signing: Signing, tmp_path: Path
) -> None:
    assert_signed_with_both_keys(delivered_column, signing.records)
    assert_scores_clean(delivered_column, "the seed column", tmp_path / "home")


def test_delivered_column_with_both_signatures_stays_under_100_kb(
    delivered_column: Received, signing: Signing
) -> None:
    assert_signed_with_both_keys(delivered_column, signing.records)
    size = len(delivered_column.data)
    print(f"the delivered column, signed twice: {size} bytes")
    assert size < MAX_COLUMN_BYTES, f"the delivered column is {size} bytes ({size / 1024:.1f} KB)"


@needs_spamassassin
def test_confirmation_mail_scores_clean_with_spamassassin(
    make_client: Callable[..., TestClient],
    smtp_server: SmtpTestServer,
    signing: Signing,
    tmp_path: Path,
) -> None:
    client = make_client(**signing.overrides)
    assert client.post("/subscribe", data={"email": READER, "name": "Ada"}).status_code == 200
    [mail] = smtp_server.wait_for(1, to=READER)
    assert mail.message["Subject"].startswith("Confirm your subscription")
    assert_signed_with_both_keys(mail, signing.records)
    assert_scores_clean(mail, "the confirmation mail", tmp_path / "home")


@needs_spamassassin
def test_already_subscribed_notice_scores_clean_with_spamassassin(
    make_client: Callable[..., TestClient],
    engine: Engine,
    smtp_server: SmtpTestServer,
    signing: Signing,
    tmp_path: Path,
) -> None:
    add_reader(engine, READER)
    client = make_client(**signing.overrides)
    assert client.post("/subscribe", data={"email": READER}).status_code == 200
    [mail] = smtp_server.wait_for(1, to=READER)
    assert mail.message["Subject"].startswith("You are already subscribed")
    assert_signed_with_both_keys(mail, signing.records)
    assert_scores_clean(mail, "the 'already subscribed' notice", tmp_path / "home")

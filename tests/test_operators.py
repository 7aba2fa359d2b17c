"""The dashboard's password: `broadside admin hash-password` prints a hash that signs in, a
plain setting is hashed once and a hash is taken as it is, and never compared as text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.operators import Password
from tests.conftest import ROOT

PASSWORD = "correct horse battery staple"


def hash_password_command(typed: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "admin", "hash-password"],
        input=typed,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hash_password_prints_only_a_hash_that_signs_in_with_the_password() -> None:
    done = hash_password_command(f"{PASSWORD}\n{PASSWORD}\n")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed.startswith("$argon2id$") and PASSWORD not in done.stdout + done.stderr
    assert Password.from_setting(printed).matches(PASSWORD)
    assert not Password.from_setting(printed).matches(PASSWORD + " ")


def test_hash_password_refuses_a_short_password_or_two_that_differ() -> None:
    short = hash_password_command("short\nshort\n")
    assert short.returncode == 2 and "at least 12 characters" in short.stderr
    assert short.stdout == ""
    differ = hash_password_command(f"{PASSWORD}\n{PASSWORD}x\n")
    assert differ.returncode != 0 and "do not match" in differ.stderr and differ.stdout == ""


def test_a_plain_setting_is_hashed_once_and_a_hash_is_taken_as_it_is() -> None:
    plain = Password.from_setting(PASSWORD)
    assert plain.hash.startswith("$argon2id$") and PASSWORD not in plain.hash
    assert plain.matches(PASSWORD) and not plain.matches(plain.hash)
    assert Password.from_setting(plain.hash) == plain
    with pytest.raises(ValueError, match="cannot be read"):
        Password.from_setting("$argon2id$not-really")

"""Settings: defaults, parsing, and one-line errors that name the variable."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from service.config import ConfigError, RelayUrl, load_settings


def test_defaults_are_embedded_and_secret_is_kept_in_var(tmp_path: Path) -> None:
    first = load_settings(_env_file=None, var_dir=tmp_path)
    second = load_settings(_env_file=None, var_dir=tmp_path)
    assert first.database_url.startswith("sqlite:///")
    assert first.relay is None
    assert first.send_time == time(6, 0)
    assert first.secret == second.secret == (tmp_path / "secret").read_text().encode()
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0


def test_production_refuses_to_start_without_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^BROADSIDE_SECRET_KEY: .*production"):
        load_settings(_env_file=None, var_dir=tmp_path, env="production")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_URL", "http://mail.example.com"),
        ("TIMEZONE", "Mars/Olympus"),
        ("SEND_TIME", "25:99"),
        ("BASE_URL", "not a url"),
        ("FROM_ADDRESS", "nobody"),
        ("FROM_NAME", "World\r\nBcc: victim@example.com"),
        ("DATABASE_URL", "mysql://x"),
        ("DELIVERY_CONNECTIONS", "0"),
        # Settings that would pass a loose check but break every mail at send time.
        ("BASE_URL", "https://zeitung.bücher.example"),
        ("FROM_ADDRESS", "kolumne@bücher.example"),
        ("FROM_ADDRESS", "jörg@example.com"),
        ("BOUNCE_DOMAIN", "bounces.bücher.example"),
        ("BOUNCE_LOCAL", "bounces+x"),
        ("BOUNCE_IMAP_URL", "imap://user:pass@mail.example.com/INBOX"),
        ("SES_TOPIC_ARNS", "arn:aws:sqs:eu-west-1:123456789012:bounces"),
        ("POSTMARK_WEBHOOK_USER", "hook"),
        ("REPLY_TO", "antwort@bücher.example"),
        ("LIST_ID", "World View <wörld.example.com>"),
        ("TRUSTED_PROXIES", "*"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.example.com"),
        ("OLD_SECRET_KEYS", "short"),
        ("RESUME_INTERVAL", "0"),
        ("RELAY_FAILURE_THRESHOLD", "0"),
        ("OUTBOX_LEASE_SECONDS", "20"),
    ],
)
def test_bad_setting_names_the_variable(
    variable: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"BROADSIDE_{variable}", value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, var_dir=tmp_path)
    assert str(info.value).startswith(f"BROADSIDE_{variable}: ")
    assert "\n" not in str(info.value)


def test_production_refuses_to_capture_mail_instead_of_delivering(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^BROADSIDE_SMTP_URL: .*production"):
        load_settings(_env_file=None, var_dir=tmp_path, env="production", secret_key="s" * 32)


def test_durations_are_iso_8601_or_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADSIDE_SEND_GRACE", "5400")
    monkeypatch.setenv("BROADSIDE_RESUME_INTERVAL", "1.5")
    monkeypatch.setenv("BROADSIDE_RETRY_DEADLINE", "PT2H")
    settings = load_settings(_env_file=None, var_dir=tmp_path)
    assert settings.send_grace == timedelta(minutes=90)
    assert settings.resume_interval == timedelta(seconds=1.5)
    assert settings.retry_deadline == timedelta(hours=2)


def test_lists_are_comma_separated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADSIDE_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1")
    monkeypatch.setenv("BROADSIDE_OLD_SECRET_KEYS", "first-old-secret-key,second-old-secret-key")
    settings = load_settings(_env_file=None, var_dir=tmp_path)
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "::1"]
    assert settings.old_secrets == [b"first-old-secret-key", b"second-old-secret-key"]
    assert "first-old" not in repr(settings)  # secrets never reach a log line


def test_environment_and_dotenv_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BROADSIDE_SEND_TIME=07:30\nBROADSIDE_TIMEZONE=Europe/Berlin\n")
    monkeypatch.setenv("BROADSIDE_SEND_GRACE", "PT2H")
    settings = load_settings(_env_file=env_file, var_dir=tmp_path)
    assert settings.send_time == time(7, 30)
    assert settings.timezone == "Europe/Berlin"
    assert settings.send_grace == timedelta(hours=2)


def test_smtp_url_forms() -> None:
    plain = RelayUrl.parse("smtp://user%40x:p%3Ass@mail.example.com:2525?starttls=true")
    assert (plain.host, plain.port, plain.username, plain.password) == (
        "mail.example.com",
        2525,
        "user@x",
        "p:ss",
    )
    assert plain.starttls and not plain.implicit_tls
    implicit = RelayUrl.parse("smtps://mail.example.com")
    assert implicit.implicit_tls and implicit.port == 465
    assert "p:ss" not in repr(plain)


def test_readme_documents_every_setting() -> None:
    from service.config import PROJECT_ROOT, Settings

    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [
        name for name in Settings.model_fields if f"`BROADSIDE_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_smtp_urls_lists_relays_with_weights_and_hourly_caps(tmp_path: Path) -> None:
    settings = load_settings(
        _env_file=None,
        var_dir=tmp_path,
        smtp_urls="smtp://a.example:25;weight=3, smtps://user:p%2Cw@b.example;per_hour=5000",
    )
    assert [(r.url.label, r.weight, r.per_hour) for r in settings.relays] == [
        ("a.example:25", 3, None),
        ("b.example:465", 1, 5000),
    ]
    assert settings.relays[1].url.password == "p,w"
    assert settings.relay == settings.relays[0].url  # transactional mail and /readyz
    single = load_settings(_env_file=None, var_dir=tmp_path, smtp_url="smtp://c.example:2525")
    assert [(r.url.label, r.weight) for r in single.relays] == [("c.example:2525", 1)]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("smtp://a:25;weight=0", r"relay 1 \(a:25\): weight must be a whole number"),
        ("smtp://a:25, smtp://b:25;weigth=2", r"relay 2 \(b:25\): unknown option 'weigth'"),
        ("smtp://a:25, http://b", "relay 2 must start with smtp://"),
        ("smtp://u:secret@a:25, smtp://a:25", "a:25 is listed twice"),
    ],
)
def test_a_bad_relay_list_is_named_in_one_line_without_its_password(
    value: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=rf"^BROADSIDE_SMTP_URLS: {problem}") as raised:
        load_settings(_env_file=None, var_dir=tmp_path, smtp_urls=value)
    assert "secret" not in str(raised.value) and "\n" not in str(raised.value)


def test_smtp_url_and_smtp_urls_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^BROADSIDE_SMTP_URLS: .*not both"):
        load_settings(
            _env_file=None, var_dir=tmp_path, smtp_url="smtp://a:25", smtp_urls="smtp://b:25"
        )


@pytest.mark.parametrize("unset", ["", "  "])
def test_an_empty_relay_variable_counts_as_unset(
    unset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docker-compose.yml passes both relay variables through; the one .env does not set
    # arrives as "" and must neither be a relay nor clash with the other.
    monkeypatch.setenv("BROADSIDE_SMTP_URL", unset)
    monkeypatch.setenv("BROADSIDE_SMTP_URLS", "smtp://a.example:25;weight=2, smtp://b.example:25")
    several = load_settings(_env_file=None, var_dir=tmp_path, env="production", secret_key="s" * 32)
    assert several.smtp_url is None
    assert [(r.url.label, r.weight) for r in several.relays] == [
        ("a.example:25", 2),
        ("b.example:25", 1),
    ]

    monkeypatch.setenv("BROADSIDE_SMTP_URL", "smtp://c.example:2525")
    monkeypatch.setenv("BROADSIDE_SMTP_URLS", unset)
    one = load_settings(_env_file=None, var_dir=tmp_path, env="production", secret_key="s" * 32)
    assert one.smtp_urls is None and [r.url.label for r in one.relays] == ["c.example:2525"]

    monkeypatch.setenv("BROADSIDE_SMTP_URL", unset)
    development = load_settings(_env_file=None, var_dir=tmp_path)
    assert development.relay is None  # the capture server, as with nothing set


def test_production_with_both_relay_variables_empty_refuses_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROADSIDE_SMTP_URL", "")
    monkeypatch.setenv("BROADSIDE_SMTP_URLS", "")
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, var_dir=tmp_path, env="production", secret_key="s" * 32)
    message = str(refused.value)
    assert message.startswith("BROADSIDE_SMTP_URL: SMTP_URL (or SMTP_URLS")
    assert "production" in message and "\n" not in message

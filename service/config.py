"""Settings: every knob of the service, read once from BROADSIDE_* variables and `.env`."""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "BROADSIDE_"
# templates/ and migrations/ sit beside the package in a checkout (PROJECT_ROOT); a wheel
# carries them inside it (pyproject.toml maps them there), so an installed copy runs anywhere.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
_INSTALLED_DATA = Path(__file__).resolve().parent
DATA_ROOT = _INSTALLED_DATA if (_INSTALLED_DATA / "templates").is_dir() else PROJECT_ROOT
TEMPLATES_DIR = DATA_ROOT / "templates"
MIGRATIONS_DIR = DATA_ROOT / "migrations"
HEADER_UNSAFE = frozenset("\r\n\0")
DNS_NAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
DkimKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
BOUNCE_LOCAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,23}")
SNS_TOPIC_ARN_RE = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}")
# /readyz: how long the database and the relay may take to answer, and how long the relay's
# answer is remembered (a probe every few seconds must not open an SMTP session each time).
READINESS_DATABASE_TIMEOUT = 5.0
READINESS_RELAY_TIMEOUT = 5.0
READINESS_RELAY_CHECK_INTERVAL = 30.0
# Dashboard sign-in attempts, right or wrong, per client IP per window.
SIGN_IN_ATTEMPTS = 5
SIGN_IN_WINDOW = timedelta(minutes=15)
# Seconds for the hand-offs in progress to finish at a stop (SIGTERM, Ctrl-C); what still runs
# then is cancelled, so a stop never takes longer than this (docker's default wait is 10 s).
SHUTDOWN_GRACE = 8.0
# Seconds between two looks for a day's column that has no send yet although its send time has
# come (it arrives late, through COLUMNS_DIR or FEED_URL): each look refreshes the sources.
LATE_COLUMN_POLL = 300.0
# Seconds between two looks of each serve/worker process for a send that another process
# started or an operator resumed (one indexed query on sends.status): how soon every worker
# joins it. The RESUME_INTERVAL heal still catches what a look missed.
SEND_POLL_SECONDS = 2.0
# DELIVERY_RATE and the relays' PER_HOUR caps are token buckets in the database shared by every
# worker; a worker takes this many seconds' worth of tokens at a time (one statement), so the
# rate holds across workers within one such batch each.
RATE_BATCH_SECONDS = 0.5
RELAY_CAP_BATCH = 10  # tokens of a relay's hourly cap taken at a time
# A bucket left idle long enough is full again and is deleted (limits.forget_idle), by each
# serve/worker heal at most every RATE_BUCKET_SWEEP_SECONDS. "Long enough" is the longest time
# any bucket takes to refill (a day), plus this much for hosts whose clocks differ: a take
# stamps the bucket with its own host's time.
RATE_BUCKET_CLOCK_SKEW = timedelta(hours=1)
RATE_BUCKET_SWEEP_SECONDS = 3600.0
# A relay that lost or refused a connection is skipped, then probed after this backoff
# (doubling while it stays down, up to the maximum).
RELAY_BACKOFF_SECONDS = 1.0
RELAY_BACKOFF_MAX_SECONDS = 60.0
LIST_ID_RE = re.compile(r"[^<>\r\n]*<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+>\s*|[A-Za-z0-9.-]+")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class RelayUrl:
    """SMTP_URL, parsed: where the relay listens and how to log in to it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False
    starttls: bool = False

    @classmethod
    def parse(cls, url: str) -> RelayUrl:
        """smtp://user:pass@host:port?starttls=true or smtps://…; ValueError names the flaw."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("must start with smtp:// or smtps://")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
            starttls=query.get("starttls", "false") in ("1", "true", "yes"),
        )

    def __repr__(self) -> str:  # never log the password
        tls = f"tls={self.implicit_tls}, starttls={self.starttls}"
        return f"RelayUrl({self.host}:{self.port}, {tls})"

    @property
    def label(self) -> str:
        """host:port, never the credentials: what the ledger and the logs name a relay by."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RelaySpec:
    """One relay of SMTP_URLS: `URL[;weight=N][;per_hour=N]`. A connection picks a relay by
    `weight`; `per_hour` caps what every worker together hands it in an hour."""

    url: RelayUrl
    weight: int = 1
    per_hour: int | None = None

    @classmethod
    def parse(cls, entry: str, number: int) -> RelaySpec:
        """One entry of the list; ValueError names it by its place and host:port, never by
        its URL, which may hold a password."""
        url, *options = (part.strip() for part in entry.split(";"))
        try:
            relay = RelayUrl.parse(url)
        except ValueError as exc:
            raise ValueError(f"relay {number} {exc}") from None
        values: dict[str, int] = {}
        for option in options:
            name, _, value = option.partition("=")
            if name.strip() not in ("weight", "per_hour"):
                raise ValueError(
                    f"relay {number} ({relay.label}): unknown option {name.strip()!r} "
                    "(weight=N, per_hour=N)"
                )
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(
                    f"relay {number} ({relay.label}): {name.strip()} must be a whole number ≥ 1"
                )
            values[name.strip()] = int(value)
        return cls(relay, values.get("weight", 1), values.get("per_hour"))


def parse_relays(value: str) -> list[RelaySpec]:
    """SMTP_URLS: relays separated by commas (URL-encode a comma in a password as %2C)."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    relays = [RelaySpec.parse(entry, number) for number, entry in enumerate(entries, 1)]
    labels = [relay.url.label for relay in relays]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"{label} is listed twice (the ledger names relays by host:port)")
    if not relays:
        raise ValueError("lists no relay")
    return relays


@dataclass(frozen=True)
class ImapUrl:
    """BOUNCE_IMAP_URL: `imaps://user:password@host[:993]/MAILBOX` (TLS only: the password
    and readers' addresses cross the network)."""

    host: str
    port: int
    username: str
    password: str
    mailbox: str

    @classmethod
    def parse(cls, url: str) -> ImapUrl:
        """Parse the URL, or ValueError naming what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme != "imaps":
            raise ValueError("must start with imaps:// (IMAP over TLS, port 993)")
        if not parts.hostname or not parts.username or parts.password is None:
            raise ValueError("must name a user, a password and a host: imaps://user:pass@host")
        try:
            port = parts.port or 993
        except ValueError:
            raise ValueError("has a port that is not a number") from None
        mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
        return cls(parts.hostname, port, unquote(parts.username), unquote(parts.password), mailbox)

    def __repr__(self) -> str:  # never the password
        return f"ImapUrl({self.host}:{self.port}/{self.mailbox})"


def load_dkim_key(value: str, kind: Literal["rsa", "ed25519"]) -> DkimKey:
    """A DKIM private key from a PEM file's path or from the PEM itself; ValueError says why
    it is not usable (unreadable, not PEM, the wrong kind, an RSA key under 1024 bits)."""
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the key file {value!r}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key without a password ({exc})") from None
    if kind == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(
                "must be an RSA private key (use DKIM_PRIVATE_KEY_ED25519 for Ed25519)"
            )
        if key.key_size < 1024:
            raise ValueError(f"an RSA key of {key.key_size} bits is too short (2048 recommended)")
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("must be an Ed25519 private key")
    return key


def _check_address(value: str | None) -> str | None:
    """An address we can put in a header and an SMTP envelope without SMTPUTF8: ASCII only."""
    if value is None or value == "":
        return None
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    if not checked.normalized.isascii():
        raise ValueError(
            f"{value!r} is internationalised; write its domain in ASCII ({checked.ascii_email})"
        )
    return checked.normalized


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting, with its default; the README's table lists the same."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./var/broadside.db"
    base_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    var_dir: Path = Path("var")

    # Outgoing mail
    smtp_url: SecretStr | None = None
    # Several relays, by weight, each with its own hourly cap: see RelaySpec.
    smtp_urls: SecretStr | None = None
    smtp_timeout: float = Field(30.0, gt=0)
    relay_failure_threshold: int = Field(10, ge=1)
    capture_port: int = Field(2525, ge=0, le=65535)
    from_address: str = "worldview@example.com"
    from_name: str = "World View"
    reply_to: str | None = None
    envelope_from: str | None = None
    list_id: str | None = None
    postal_address: str = "World View, 1 Example Street, Example City"
    feedback_notify: str | None = None

    # DKIM (RFC 6376; Ed25519 per RFC 8463): a path to a PEM file, or the PEM itself
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: SecretStr | None = None
    dkim_selector_ed25519: str | None = None
    dkim_private_key_ed25519: SecretStr | None = None

    # Bounces and complaints: VERP return paths, the mailto: unsubscribe and the receiver
    bounce_domain: str | None = None
    bounce_local: str = "bounces"
    bounce_smtp_host: str = "127.0.0.1"
    bounce_smtp_port: int | None = Field(None, ge=0, le=65535)
    bounce_imap_url: SecretStr | None = None
    bounce_imap_interval: timedelta = timedelta(minutes=5)
    soft_bounce_limit: int = Field(3, ge=1)
    soft_bounce_window: timedelta = timedelta(days=15)
    postmark_webhook_user: str | None = None
    postmark_webhook_password: SecretStr | None = None
    ses_topic_arns: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Admin
    admin_token: SecretStr | None = None
    # The dashboard's sign-in: a password, or its argon2 hash ("$argon2id$…", which is safer
    # to keep in a file); hashed with argon2 at start-up either way.
    admin_password: SecretStr | None = None
    admin_session_hours: float = Field(8.0, gt=0, le=24 * 30)
    old_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1"])

    # Schedule and columns
    send_time: time = time(6, 0)
    timezone: str = "UTC"
    send_grace: timedelta = timedelta(hours=6)
    # local: each reader gets the day's column at SEND_TIME in their own time zone (the send
    # starts when the earliest zone, UTC+14, gets there); fixed: everyone at SEND_TIME in
    # TIMEZONE.
    delivery_timing: Literal["local", "fixed"] = "local"
    columns_dir: Path = Path("seeds")
    feed_url: str | None = None

    # Reader lifecycle
    confirm_token_days: int = Field(7, ge=1)
    unsubscribe_token_days: int = Field(730, ge=30)
    notice_interval: timedelta = timedelta(days=1)
    subscribe_per_ip_per_hour: int = Field(10, ge=1)
    subscribe_per_address_per_hour: int = Field(3, ge=1)
    subscribe_per_address_per_day: int = Field(5, ge=1)
    feedback_per_ip_per_hour: int = Field(5, ge=1)
    feedback_max_length: int = Field(4000, ge=100)

    # Delivery
    delivery_connections: int = Field(8, ge=1, le=64)
    delivery_rate: float = Field(0.0, ge=0)
    delivery_max_per_connection: int = Field(1000, ge=1)
    delivery_batch_size: int = Field(200, ge=1, le=5000)
    # Child processes that build and sign a large send's messages beside the SMTP work, each
    # ~33 MB; 0: two threads of the worker's own, since OpenSSL lets go of the GIL while it
    # signs. On two cores they did as well where RSA is fast; where it is slow, 2 processes sent
    # ~25 % faster on SQLite (docs/BENCHMARKS.md, 2026-11-27).
    delivery_build_processes: int = Field(0, ge=0, le=16)
    delivery_lease_seconds: float = Field(60.0, gt=0)
    retry_initial_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    retry_deadline: timedelta = timedelta(hours=24)
    resume_interval: timedelta = timedelta(minutes=1)
    outbox_poll_seconds: float = Field(2.0, gt=0)
    outbox_lease_seconds: float = Field(300.0, gt=0)

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # /metrics: with a port, served on 127.0.0.1:PORT apart from the app (no credential);
    # without, on the app at /metrics behind the admin token.
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        # Every mail carries it in List-Unsubscribe, which must stay unencoded ASCII.
        if not value.isascii() or HEADER_UNSAFE & set(value) or " " in value:
            raise ValueError(
                "must be ASCII without spaces: write an internationalised domain as xn--…"
            )
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("postgres://") or value.startswith("postgresql://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        if not (value.startswith("sqlite") or value.startswith("postgresql+psycopg")):
            raise ValueError("must be sqlite:///PATH or postgresql://…")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Empty (or blank) is unset: docker-compose.yml passes both relay variables through,
        # the one the operator did not write as "".
        if value is not None and value.get_secret_value().strip():
            RelayUrl.parse(value.get_secret_value().strip())
            return SecretStr(value.get_secret_value().strip())
        return None

    @field_validator("smtp_urls")
    @classmethod
    def _smtp_urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():  # empty is unset, as above
            parse_relays(value.get_secret_value())
            return value
        return None

    @field_validator("from_address", "reply_to", "envelope_from", "feedback_notify")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        return _check_address(value)

    @field_validator("from_name", "postal_address", "list_id")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        if value is not None and HEADER_UNSAFE & set(value):
            raise ValueError("must not contain line breaks")
        return value

    @field_validator("list_id")
    @classmethod
    def _list_id(cls, value: str | None) -> str | None:
        # RFC 2919: an optional phrase, then <list-label.domain> in ASCII.
        if value and not LIST_ID_RE.fullmatch(value):
            raise ValueError("must look like 'Name <list.example.com>' (ASCII inside <>)")
        return value

    @field_validator("old_secret_keys", "trusted_proxies", "ses_topic_arns", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            if item == "*":
                raise ValueError("'*' would let any client choose its own address; list IPs")
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator(
        "send_grace",
        "notice_interval",
        "retry_deadline",
        "resume_interval",
        "bounce_imap_interval",
        "soft_bounce_window",
        mode="before",
    )
    @classmethod
    def _seconds(cls, value: object) -> object:
        # Durations are ISO 8601 ("PT6H") or plain seconds ("21600"), as the README says;
        # pydantic reads a bare number from a string as days-or-nothing, so convert it here.
        if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
            return timedelta(seconds=float(value))
        return value

    @field_validator("dkim_domain", "dkim_selector", "dkim_selector_ed25519", "bounce_domain")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value and not DNS_NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS name (ASCII letters, digits, '-', '.')")
        return value.lower() if value else None

    @field_validator("bounce_local")
    @classmethod
    def _bounce_local(cls, value: str) -> str:
        # VERP puts "+<token>" after it, and the whole local part must fit 64 characters.
        if not BOUNCE_LOCAL_RE.fullmatch(value):
            raise ValueError(
                "must be 1-24 ASCII letters, digits, '.', '-' or '_' (no '+': VERP adds it)"
            )
        return value.lower()

    @field_validator("bounce_imap_url")
    @classmethod
    def _imap_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        ImapUrl.parse(value.get_secret_value())
        return value

    @field_validator("ses_topic_arns")
    @classmethod
    def _topic_arns(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not SNS_TOPIC_ARN_RE.fullmatch(arn):
                raise ValueError(f"{arn!r} is not an SNS topic ARN (arn:aws:sns:REGION:ID:NAME)")
        return value

    @field_validator("dkim_private_key")
    @classmethod
    def _rsa_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            load_dkim_key(value.get_secret_value(), "rsa")
        return value

    @field_validator("dkim_private_key_ed25519")
    @classmethod
    def _ed25519_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            load_dkim_key(value.get_secret_value(), "ed25519")
        return value

    @field_validator("resume_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # Each message starts with the variable it is about: _explain names it from there.
        if self.env == "production" and self.secret_key is None:
            raise ValueError("SECRET_KEY must be set when BROADSIDE_ENV=production")
        if self.smtp_url is not None and self.smtp_urls is not None:
            raise ValueError("SMTP_URLS replaces SMTP_URL: set one of them, not both")
        if self.env == "production" and self.smtp_url is None and self.smtp_urls is None:
            raise ValueError(
                "SMTP_URL (or SMTP_URLS, for several relays) must be set when "
                "BROADSIDE_ENV=production (without a relay mail is only captured, never delivered)"
            )
        if self.secret_key is not None and len(self.secret_key.get_secret_value()) < 16:
            raise ValueError("SECRET_KEY must be at least 16 characters")
        if any(len(key.get_secret_value()) < 16 for key in self.old_secret_keys):
            raise ValueError("OLD_SECRET_KEYS must each be at least 16 characters")
        keys = self.dkim_private_key or self.dkim_private_key_ed25519
        if keys and not self.dkim_domain:
            raise ValueError("DKIM_DOMAIN must be set to sign with a DKIM key")
        if self.dkim_private_key and not self.dkim_selector:
            raise ValueError("DKIM_SELECTOR must be set to sign with DKIM_PRIVATE_KEY")
        if self.dkim_private_key_ed25519 and not self.dkim_selector_for_ed25519:
            raise ValueError(
                "DKIM_SELECTOR_ED25519 must be set to sign with DKIM_PRIVATE_KEY_ED25519"
            )
        if self.dkim_domain and not keys:
            raise ValueError("DKIM_PRIVATE_KEY (or DKIM_PRIVATE_KEY_ED25519) must be set to sign")
        if self.admin_password is not None and len(self.admin_password.get_secret_value()) < 12:
            raise ValueError("ADMIN_PASSWORD must be at least 12 characters (or an argon2 hash)")
        if self.postmark_webhook_user and not self.postmark_webhook_password:
            raise ValueError("POSTMARK_WEBHOOK_USER needs POSTMARK_WEBHOOK_PASSWORD set too")
        if self.postmark_webhook_password and not self.postmark_webhook_user:
            raise ValueError("POSTMARK_WEBHOOK_PASSWORD needs POSTMARK_WEBHOOK_USER set too")
        if self.outbox_lease_seconds < 4 * self.smtp_timeout:
            raise ValueError(
                "OUTBOX_LEASE_SECONDS must be at least 4 × SMTP_TIMEOUT, "
                "so that one hand-off fits in a lease"
            )
        return self

    # Derived values
    @property
    def tz(self) -> ZoneInfo:
        """TIMEZONE as a zone object."""
        return ZoneInfo(self.timezone)

    @property
    def relay(self) -> RelayUrl | None:
        """The configured relay (the first of SMTP_URLS: transactional mail and /readyz use
        it), or None for the embedded capture server."""
        relays = self.relays
        return relays[0].url if relays else None

    @property
    def relays(self) -> list[RelaySpec]:
        """SMTP_URLS, or SMTP_URL as one relay of weight 1, or none (the capture server)."""
        if self.smtp_urls is not None:
            return parse_relays(self.smtp_urls.get_secret_value())
        if self.smtp_url is None:
            return []
        return [RelaySpec(RelayUrl.parse(self.smtp_url.get_secret_value()))]

    @property
    def mail_domain(self) -> str:
        """The domain of FROM_ADDRESS (Message-IDs, Feedback-ID, defaults)."""
        return self.from_address.rsplit("@", 1)[1]

    @property
    def mail_from(self) -> str:
        """The envelope sender (MAIL FROM), where bounces go; defaults to From."""
        return self.envelope_from or self.from_address

    @property
    def bounce_address(self) -> str:
        """Where bounces of transactional mail go, and the feedback-loop address to register
        with mailbox providers: BOUNCE_LOCAL@BOUNCE_DOMAIN, or the plain envelope sender."""
        if self.bounce_domain is None:
            return self.mail_from
        return f"{self.bounce_local}@{self.bounce_domain}"

    @property
    def list_identifier(self) -> str:
        """The List-Id value (RFC 2919)."""
        return self.list_id or f"{self.from_name} <world-view.{self.mail_domain}>"

    @property
    def outbox_dir(self) -> Path:
        """Where the capture server keeps mail as .eml files."""
        return self.var_dir / "outbox"

    @property
    def secret(self) -> bytes:
        """SECRET_KEY as bytes, for signing links."""
        assert self.secret_key is not None, "load_settings() resolves the secret"
        return self.secret_key.get_secret_value().encode()

    @property
    def dkim_selector_for_ed25519(self) -> str | None:
        """The Ed25519 key's selector: its own DNS record, so its own name (RFC 8463)."""
        if self.dkim_private_key_ed25519 is None:
            return None
        if self.dkim_selector_ed25519:
            return self.dkim_selector_ed25519
        return f"{self.dkim_selector}-ed25519" if self.dkim_selector else None

    @property
    def old_secrets(self) -> list[bytes]:
        """Earlier secrets: links they signed still verify, nothing new is signed with them."""
        return [key.get_secret_value().encode() for key in self.old_secret_keys]


def _explain(exc: ValidationError) -> str:
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"]:
        return f"{ENV_PREFIX}{str(first['loc'][0]).upper()}: {message}"
    named = re.match(r"([A-Z][A-Z0-9_]+) ", message)
    return f"{ENV_PREFIX}{named.group(1)}: {message}" if named else f"configuration: {message}"


def _development_secret(var_dir: Path) -> SecretStr:
    """Make a secret once and keep it in var/secret so links survive restarts."""
    path = var_dir / "secret"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return SecretStr(path.read_text().strip())


def load_settings(**overrides: object) -> Settings:
    """Build the settings or raise ConfigError with one line naming the bad variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    if settings.secret_key is None:
        try:
            settings.secret_key = _development_secret(settings.var_dir)
        except OSError as exc:
            raise ConfigError(
                f"{ENV_PREFIX}VAR_DIR: cannot keep the secret there ({exc})"
            ) from None
    return settings

"""The relays that report by HTTP: Amazon SES through SNS (signed messages, checked against
Amazon's certificate) and Postmark, read into findings and recorded like any other report."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlmodel import Session

from ..context import AppContext
from ..models import BounceKind
from .receiver import route
from .record import attribute, record_bounce
from .report import Finding, classify_status

log = logging.getLogger(__name__)

# Amazon's documented shape of SNS endpoints; a certificate anywhere else could be one the
# sender made for itself, so it is refused before anything is fetched.
SNS_HOST_RE = re.compile(r"sns\.[a-z0-9-]{3,}\.amazonaws\.com(\.cn)?")
CERT_TIMEOUT = 5.0  # seconds; SNS gives up on our answer after 15
MAX_CERT_BYTES = 16 * 1024  # a PEM certificate is about 2 KB
MAX_CACHED_CERTS = 32  # Amazon signs with one certificate per region at a time
# The keys each SNS message type signs, in the order of the string to sign.
SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}
STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
MAX_ADDRESS = 320  # the Bounce row's column
# SES's transient sub-types about our message, not the reader's mailbox: they must not count
# towards the reader's soft-bounce score.
SES_MESSAGE_SUBTYPES = frozenset({"ContentRejected", "AttachmentRejected", "MessageTooLarge"})
POSTMARK_KINDS = {
    "HardBounce": BounceKind.hard,
    "BadEmailAddress": BounceKind.hard,
    "ManuallyDeactivated": BounceKind.hard,
    "SoftBounce": BounceKind.soft,
    "Transient": BounceKind.soft,
    "DnsError": BounceKind.soft,
    "SpamNotification": BounceKind.policy,
    "Blocked": BounceKind.policy,
    "VirusNotification": BounceKind.policy,
    "DMARCPolicy": BounceKind.policy,
    "AutoResponder": BounceKind.auto_reply,
    "ChallengeVerification": BounceKind.auto_reply,
    "Unsubscribe": BounceKind.unsubscribe,
    "SpamComplaint": BounceKind.complaint,
}
# SubscriptionChange's SuppressionReason; ManualSuppression is the reader's unsubscribe
# through Postmark's own link (or the operator's, in Postmark's dashboard).
POSTMARK_SUPPRESSIONS = {
    "HardBounce": BounceKind.hard,
    "SpamComplaint": BounceKind.complaint,
    "ManualSuppression": BounceKind.unsubscribe,
}


class WebhookError(Exception):
    """A webhook call we did not act on; the message says why."""


class MalformedWebhook(WebhookError):
    """The body is not a message of the kind this webhook takes."""


class UntrustedWebhook(WebhookError):
    """The message could not be shown to come from the configured relay."""


class WebhookUnavailable(WebhookError):
    """Amazon could not be reached to check or confirm; the sender should try again later."""


@dataclass(frozen=True)
class Outcome:
    """What one webhook call did, and how many reports it recorded."""

    status: str  # recorded, ignored, subscribed, unsubscribed
    recorded: int = 0


@dataclass(frozen=True)
class SnsMessage:
    """One SNS message as posted to us: its string fields, as signed."""

    fields: dict[str, str]

    @property
    def type(self) -> str:
        """Notification, SubscriptionConfirmation or UnsubscribeConfirmation."""
        return self.fields["Type"]

    @property
    def topic_arn(self) -> str:
        """The topic that sent it."""
        return self.fields["TopicArn"]

    def string_to_sign(self) -> bytes:
        """The canonical text SNS signed: "Key\\nvalue\\n" for each signed key present."""
        keys = SIGNED_KEYS[self.type]
        return "".join(f"{k}\n{self.fields[k]}\n" for k in keys if k in self.fields).encode()


@dataclass(frozen=True)
class SesReport:
    """What an SES notification says, and the envelope sender of the mail it is about."""

    findings: list[Finding]
    envelope_sender: str | None = None


# SES through SNS ---------------------------------------------------------------------------


def read_sns(body: bytes) -> SnsMessage:
    """An SNS message from the request body, or MalformedWebhook."""
    data = _json_object(body)
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    kind = fields.get("Type")
    if kind not in SIGNED_KEYS:
        raise MalformedWebhook(f"not an SNS message type we take: {str(kind)[:40]!r}")
    required = [k for k in SIGNED_KEYS[kind] if k != "Subject"]
    missing = [k for k in required if k not in fields]
    if missing:
        raise MalformedWebhook(f"the SNS message has no {', '.join(missing)}")
    return SnsMessage(fields)


def is_sns_host_url(url: str, *, suffix: str = "") -> bool:
    """An https:// URL on an SNS endpoint (sns.REGION.amazonaws.com[.cn]), its path ending
    with `suffix`: the only places a signing certificate or a subscribe link may be."""
    if not (url.isascii() and url.isprintable()) or " " in url:
        return False  # Amazon's URLs are plain ASCII; httpx refuses control characters
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and port in (None, 443)
        and not parts.username
        and parts.password is None
        and SNS_HOST_RE.fullmatch(parts.hostname or "") is not None
        and parts.path.endswith(suffix)
    )


class SnsVerifier:
    """Checks SNS signatures against Amazon's certificates, fetched over HTTPS once per URL
    and kept for the process's life, and confirms subscriptions. It holds the HTTP client,
    so tests give it one whose transport serves their own certificate."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self._certificates: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def verify(self, message: SnsMessage, topics: list[str]) -> None:
        """Return if the message comes from SNS for one of `topics`; else UntrustedWebhook
        (WebhookUnavailable when Amazon could not be reached to tell)."""
        if message.topic_arn not in topics:
            raise UntrustedWebhook(f"topic {message.topic_arn[:300]} is not in SES_TOPIC_ARNS")
        algorithm = SIGNATURE_HASHES.get(message.fields.get("SignatureVersion", ""))
        if algorithm is None:
            raise UntrustedWebhook("no SignatureVersion we know (1 or 2)")
        cert_url = message.fields.get("SigningCertURL", "")
        if not is_sns_host_url(cert_url, suffix=".pem"):
            raise UntrustedWebhook(f"signing certificate outside SNS: {cert_url[:300]!r}")
        try:
            signature = base64.b64decode(message.fields.get("Signature", ""), validate=True)
        except binascii.Error:
            raise UntrustedWebhook("the signature is not base64") from None
        try:
            self._public_key(cert_url).verify(
                signature, message.string_to_sign(), padding.PKCS1v15(), algorithm()
            )
        except InvalidSignature:
            raise UntrustedWebhook("the signature does not match the message") from None

    def confirm_subscription(self, message: SnsMessage) -> None:
        """Visit a verified SubscriptionConfirmation's SubscribeURL, as SNS asks."""
        url = message.fields["SubscribeURL"]
        if not is_sns_host_url(url):
            raise UntrustedWebhook(f"subscribe URL outside SNS: {url[:300]!r}")
        try:
            with self.http.stream("GET", url, timeout=CERT_TIMEOUT) as answer:
                status = answer.status_code
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise WebhookUnavailable(f"could not confirm the subscription: {exc}") from None
        if status != 200:
            raise WebhookUnavailable(f"SNS answered {status} to the subscription confirmation")
        log.info("confirmed the SNS subscription to %s", message.topic_arn)

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            cached = self._certificates.get(url)
        if cached is not None:
            return cached
        key = _rsa_key(self._fetch(url))
        with self._lock:
            if len(self._certificates) >= MAX_CACHED_CERTS:
                self._certificates.clear()
            self._certificates[url] = key
        return key

    def _fetch(self, url: str) -> bytes:
        """The certificate's PEM, read up to MAX_CERT_BYTES (no redirects are followed)."""
        try:
            with self.http.stream("GET", url, timeout=CERT_TIMEOUT) as answer:
                if answer.status_code >= 500:
                    raise WebhookUnavailable(f"SNS answered {answer.status_code} for {url}")
                if answer.status_code != 200:
                    raise UntrustedWebhook(f"no signing certificate at {url[:300]}")
                pem = b""
                for chunk in answer.iter_bytes():
                    pem += chunk
                    if len(pem) > MAX_CERT_BYTES:
                        raise UntrustedWebhook("the signing certificate is too large")
                return pem
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise WebhookUnavailable(f"could not fetch the signing certificate: {exc}") from None


def _rsa_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        raise UntrustedWebhook("the signing certificate is not a PEM certificate") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise UntrustedWebhook("the signing certificate's key is not RSA")
    return key


def receive_ses(session: Session, ctx: AppContext, verifier: SnsVerifier, body: bytes) -> Outcome:
    """Act on one SNS message: confirm a subscription, or record the bounces and complaints
    of an SES notification. The network calls come before the first query, so no
    transaction is open while Amazon answers."""
    message = read_sns(body)
    verifier.verify(message, ctx.settings.ses_topic_arns)
    if message.type == "SubscriptionConfirmation":
        verifier.confirm_subscription(message)
        return Outcome("subscribed")
    if message.type == "UnsubscribeConfirmation":
        log.warning(
            "SNS topic %s no longer sends to this webhook; to subscribe again, visit %s",
            message.topic_arn,
            message.fields["SubscribeURL"],
        )
        return Outcome("unsubscribed")
    report = read_ses(message.fields["Message"])
    if not report.findings:
        return Outcome("ignored")
    verp = route(ctx.settings, report.envelope_sender) if report.envelope_sender else None
    # A VERP token names one delivery, so one reader: only trusted for a one-recipient mail.
    token = verp.token if verp is not None and len(report.findings) == 1 else None
    message_id = message.fields.get("MessageId", "")
    for index, finding in enumerate(report.findings):
        whom = attribute(session, ctx, delivery_token=token, email=finding.email)
        record_bounce(
            session,
            ctx,
            finding,
            whom,
            source="ses",
            raw_size=len(body),
            raw=body,
            report_id=f"ses:{message_id}:{index}" if message_id else None,
        )
    return Outcome("recorded", len(report.findings))


def read_ses(text: str) -> SesReport:
    """The findings of an SES notification (an SNS Message): one per bounced or complaining
    recipient; deliveries and every other event find nothing."""
    data = _json_object(text.encode())
    kind = data.get("notificationType") or data.get("eventType")
    mail = _object(data, "mail")
    sender = _address(mail.get("source"))
    if kind == "Bounce":
        return SesReport(_ses_bounces(_object(data, "bounce")), sender)
    if kind == "Complaint":
        return SesReport(_ses_complaints(_object(data, "complaint")), sender)
    return SesReport([], sender)


def _ses_bounces(bounce: dict[str, Any]) -> list[Finding]:
    bounce_type = str(bounce.get("bounceType", ""))
    sub_type = str(bounce.get("bounceSubType", ""))
    findings = []
    for recipient in _objects(bounce, "bouncedRecipients"):
        status = _status(recipient.get("status"))
        diagnostic = recipient.get("diagnosticCode")
        findings.append(
            Finding(
                _ses_kind(bounce_type, sub_type, status),
                _address(recipient.get("emailAddress")),
                status,
                str(diagnostic) if diagnostic else f"{bounce_type}/{sub_type}",
            )
        )
    return findings


def _ses_kind(bounce_type: str, sub_type: str, status: str | None) -> BounceKind:
    """Permanent is hard and the rest soft, unless the status (5.7.x) or the sub-type says
    the receiver refused our message rather than the reader's mailbox being gone."""
    if classify_status(status) is BounceKind.policy or sub_type in SES_MESSAGE_SUBTYPES:
        return BounceKind.policy
    return BounceKind.hard if bounce_type == "Permanent" else BounceKind.soft


def _ses_complaints(complaint: dict[str, Any]) -> list[Finding]:
    feedback_type = complaint.get("complaintFeedbackType") or "abuse"
    return [
        Finding(
            BounceKind.complaint,
            _address(recipient.get("emailAddress")),
            diagnostic=f"feedback-type: {feedback_type}",
        )
        for recipient in _objects(complaint, "complainedRecipients")
    ]


# Postmark ----------------------------------------------------------------------------------


def receive_postmark(session: Session, ctx: AppContext, body: bytes) -> Outcome:
    """Record what one Postmark webhook call says (the caller checked its credentials)."""
    finding = read_postmark(body)
    if finding is None:
        return Outcome("ignored")
    whom = attribute(session, ctx, email=finding.email)
    record_bounce(
        session,
        ctx,
        finding,
        whom,
        source="postmark",
        raw_size=len(body),
        raw=body,
        report_id=postmark_report_id(body),
    )
    return Outcome("recorded", 1)


def postmark_report_id(body: bytes) -> str | None:
    """Postmark's own id of a record (its ID, or for a subscription change the message and
    the time of the change): Postmark retries a webhook until it is answered."""
    data = _json_object(body)
    key = data.get("ID") or "{}@{}".format(data.get("MessageID", ""), data.get("ChangedAt", ""))
    return f"postmark:{data.get('RecordType')}:{key}" if key != "@" else None


def read_postmark(body: bytes) -> Finding | None:
    """The finding of a Postmark bounce, spam complaint or subscription change; None for the
    records that are not about a reader's mailbox (deliveries, opens, clicks, reactivations)."""
    data = _json_object(body)
    record_type = data.get("RecordType")
    if not isinstance(record_type, str):
        raise MalformedWebhook("a Postmark webhook names its RecordType")
    if record_type in ("Bounce", "SpamComplaint"):
        kind = str(data.get("Type") or record_type)
        details = data.get("Details") or data.get("Description") or kind
        return Finding(
            POSTMARK_KINDS.get(kind, BounceKind.unknown),
            _address(data.get("Email")),
            _status(details),
            f"{kind}: {details}",
        )
    if record_type == "SubscriptionChange" and data.get("SuppressSending") is True:
        reason = str(data.get("SuppressionReason", ""))
        return Finding(
            POSTMARK_SUPPRESSIONS.get(reason, BounceKind.unknown),
            _address(data.get("Recipient")),
            diagnostic=f"Postmark suppressed the address: {reason} ({data.get('Origin', '')})",
        )
    return None


# Reading JSON ------------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MalformedWebhook("the body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedWebhook("the body is not a JSON object")
    return data


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _objects(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _address(value: object) -> str | None:
    """An address as a relay reports it ("Ada <ada@example.com>" or bare), lower-cased."""
    if not isinstance(value, str):
        return None
    address = value.rpartition("<")[2].strip().rstrip(">").strip().lower()
    return address if "@" in address and len(address) <= MAX_ADDRESS else None


def _status(value: object) -> str | None:
    """The RFC 3463 status in a relay's field ("5.1.1", "smtp; 550 5.1.1 …"), if any."""
    found = STATUS_RE.search(value) if isinstance(value, str) else None
    return found.group(0) if found else None

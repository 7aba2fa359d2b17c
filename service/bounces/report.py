"""What a mail that came back says: a delivery status notification (RFC 3464), a complaint
(ARF, RFC 5965), an auto-reply (RFC 3834), or something else. The email package reads the
MIME (`multipart/report`); bounces that are not RFC 3464 go to flufl.bounce's detectors for
the dozens of formats MTAs invented before it. Nothing here knows a reader or a database."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser

import flufl.bounce

from ..mail.smtp import enhanced_status
from ..models import BounceKind

# RFC 3463: X.7.x is security or policy (a spam filter, a blocklist) and 5.1.7/5.1.8 name the
# sender's address: reports about our message, not about the reader's mailbox.
_SENDER_STATUS = frozenset({"5.1.7", "5.1.8"})
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_BASIC_CODE_RE = re.compile(r"\b([245])\d\d\b")
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(out of (the )?office|auto(matic)?[ -]?(reply|response)|autoreply|auto:|"
    r"abwesenheitsnotiz|absence|vacation|r[ée]ponse automatique|respuesta autom[aá]tica)",
    re.I,
)
_PARSER = BytesParser(policy=policy.default)


@dataclass(frozen=True)
class Finding:
    """One thing the report says about one recipient."""

    kind: BounceKind
    email: str | None = None  # the recipient as the report names it (may be absent)
    status: str | None = None  # RFC 3463 code
    diagnostic: str | None = None


@dataclass
class Report:
    """A mail that came back, read."""

    findings: list[Finding]
    # The headers of our original message when the report quotes them (DSNs and ARF reports
    # usually do): its signed links name the reader even when the recipient is redacted.
    original: Message | None = None
    subject: str = ""
    message_id: str = ""  # the report's own Message-ID: the same report, retried, has it too
    notes: list[str] = field(default_factory=list)


def read_report(raw: bytes) -> Report:
    """Read a mail sent to one of our bounce addresses."""
    msg = _PARSER.parsebytes(raw)
    read = Report([], _original(msg), _header(msg, "subject"), _header(msg, "message-id"))
    if _is_report(msg, "feedback-report"):
        read.findings = [_complaint(msg)]
    elif _is_report(msg, "delivery-status") and (found := _delivery_status(msg)):
        read.findings = found
    # Older MTAs' bounces (Exim's among them) also say Auto-Submitted: the formats they use
    # are tried before a mail is taken for an out-of-office.
    elif detected := _detected(msg):
        read.findings, read.notes = detected, ["not RFC 3464: heuristics"]
    elif is_auto_reply(msg):
        read.findings = [Finding(BounceKind.auto_reply, diagnostic=read.subject[:1000])]
        read.original = None
    return read


def is_auto_reply(msg: Message) -> bool:
    """An out-of-office or other automatic answer (RFC 3834 Auto-Submitted, the headers
    older responders set, or the subjects they use): never a bounce."""
    auto = _header(msg, "auto-submitted").lower()
    if auto and not auto.startswith("no"):
        return True
    if any(msg.get(name) for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress")):
        return True
    if _header(msg, "precedence").lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT_RE.match(_header(msg, "subject")))


def classify_status(status: str | None, action: str = "failed") -> BounceKind:
    """A DSN's (or a webhook's) status as what it means for the reader: 5.x.x is a hard
    bounce unless it is about our message (policy, the sender); 4.x.x and delayed are soft."""
    if action == "delayed" or status is None or status.startswith("4"):
        return BounceKind.soft
    if status.startswith("5"):
        if status.startswith("5.7.") or status in _SENDER_STATUS:
            return BounceKind.policy
        return BounceKind.hard
    return BounceKind.soft


def _is_report(msg: Message, report_type: str) -> bool:
    return (
        msg.get_content_type() == "multipart/report"
        and str(msg.get_param("report-type", "")).lower() == report_type
    )


def _delivery_status(msg: Message) -> list[Finding]:
    """One finding per recipient block of the message/delivery-status part that failed or
    was delayed (RFC 3464 2.3); "delivered", "relayed" and "expanded" are not bounces."""
    findings: list[Finding] = []
    for part in msg.walk():
        if part.get_content_type() not in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            continue
        for block in _status_blocks(part)[
            1:
        ]:  # the first block is about the message, the rest recipients
            action = _header(block, "action").lower().split("(")[0].strip()
            if action not in ("failed", "delayed"):
                continue
            diagnostic = _header(block, "diagnostic-code")
            status = _status(_header(block, "status")) or _status_in(diagnostic)
            findings.append(
                Finding(
                    classify_status(status, action),
                    _address(_header(block, "final-recipient"))
                    or _address(_header(block, "original-recipient")),
                    status,
                    (diagnostic.partition(";")[2].strip() or diagnostic or action)[:1000],
                )
            )
    return findings


def _status_blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status part. The email package splits
    message/delivery-status into its blocks itself; RFC 6533's message/global-delivery-status
    (UTF-8 fields) it reads as one message, so its text is split at the blank lines and each
    block read as a header block."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        text = payload[0].as_bytes()
    else:
        raw = part.get_payload(decode=True)
        text = raw if isinstance(raw, bytes) else b""
    chunks = re.split(rb"\r?\n[ \t]*\r?\n", text.strip())
    return [_PARSER.parsebytes(chunk + b"\r\n", headersonly=True) for chunk in chunks if chunk]


def _complaint(msg: Message) -> Finding:
    """An ARF report (RFC 5965): who complained, as far as the report says."""
    fields: Message | None = None
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            fields = _fields(part)
            break
    feedback_type = _header(fields, "feedback-type") if fields is not None else ""
    recipient = _address(_header(fields, "original-rcpt-to")) if fields is not None else None
    return Finding(
        BounceKind.complaint,
        recipient,
        None,
        f"feedback-type: {feedback_type or 'abuse'}"[:1000],
    )


def _detected(msg: Message) -> list[Finding]:
    """Bounces in formats older than RFC 3464, by flufl.bounce's detectors (the ones GNU
    Mailman uses): addresses that failed for good, and temporarily."""
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception:  # a detector choking on odd MIME must not lose the mail: kept as unknown
        return []
    found = [
        Finding(BounceKind.hard, a.decode(errors="replace").lower()) for a in sorted(permanent)
    ]
    found += [
        Finding(BounceKind.soft, a.decode(errors="replace").lower())
        for a in sorted(temporary - permanent)
    ]
    return found


def _original(msg: Message) -> Message | None:
    """Our original message's headers, from the report's message/rfc822 or
    text/rfc822-headers part, if it quotes them."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if ctype in ("text/rfc822-headers", "message/global-headers"):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return _PARSER.parsebytes(raw, headersonly=True)
    return None


def _fields(part: Message) -> Message:
    """A report part's fields (message/feedback-report is "name: value" lines)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raw = part.get_payload(decode=True)
    return _PARSER.parsebytes(raw if isinstance(raw, bytes) else b"", headersonly=True)


def _header(msg: object, name: str) -> str:
    if not isinstance(msg, Message):
        return ""
    try:
        value = msg.get(name)
    except (ValueError, IndexError, TypeError):  # a header the policy cannot parse
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _address(value: str) -> str | None:
    """The address in an "rfc822; user@example.com" field (RFC 3464 2.3.2)."""
    address = value.partition(";")[2] if ";" in value else value
    address = address.strip().strip("<>").strip()
    return address.lower() if "@" in address else None


def _status(value: str) -> str | None:
    found = _STATUS_RE.search(value)
    return found.group(0) if found else None


def _status_in(diagnostic: str) -> str | None:
    """The status inside a Diagnostic-Code ("smtp; 550 5.1.1 …"), or its basic code's class."""
    text = diagnostic.partition(";")[2].strip() or diagnostic
    code, _, rest = text.partition(" ")
    found = enhanced_status(rest) or _status(text)
    if found:
        return found
    basic = _BASIC_CODE_RE.match(code)
    return f"{basic.group(1)}.0.0" if basic else None

"""Reading what comes back, format by format: RFC 3464 reports as Postfix, Exim, Exchange and
Gmail write them (and RFC 6533's internationalised form), ARF complaints, auto-replies in
several languages, pre-3464 bounces, and any bytes at all without an exception."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bounces.report import classify_status, read_report
from service.models import BounceKind


def report(
    *,
    status: str | None,
    diagnostic: str,
    action: str = "failed",
    extra: str = "",
    part: str = "message/delivery-status",
    recipient: str = "ann@example.org",
) -> bytes:
    status_line = f"Status: {status}\r\n" if status else ""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "Subject: Mail delivery failed\r\n"
        f"{extra}"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type="delivery-status"; boundary="=_b"\r\n'
        "\r\n--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDelivery failed.\r\n"
        f"\r\n--=_b\r\nContent-Type: {part}\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Final-Recipient: rfc822; {recipient.upper()}\r\n"
        f"Action: {action}\r\n{status_line}"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n--=_b--\r\n"
    ).encode()


HARD, SOFT, POLICY = BounceKind.hard, BounceKind.soft, BounceKind.policy
MTAS = {
    "postfix user unknown": (
        report(status="5.1.1", diagnostic="smtp; 550 5.1.1 <ann@example.org>: User unknown"),
        HARD,
        "5.1.1",
    ),
    "exim, auto-submitted": (
        report(
            status="5.0.0",
            diagnostic="smtp; 550 Unrouteable address",
            extra="Auto-Submitted: auto-replied\r\n",
        ),
        HARD,
        "5.0.0",
    ),
    "exchange 5.1.10": (
        report(status="5.1.10", diagnostic="smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
        HARD,
        "5.1.10",
    ),
    "gmail over quota": (
        report(status="5.2.2", diagnostic="smtp; 552-5.2.2 The account is over quota."),
        HARD,
        "5.2.2",
    ),
    "delayed": (
        report(status="4.4.7", action="delayed", diagnostic="smtp; 451 4.4.7 try later"),
        SOFT,
        "4.4.7",
    ),
    "no Status, code in the diagnostic": (
        report(status=None, diagnostic="smtp; 550 5.1.1 no such user"),
        HARD,
        "5.1.1",
    ),
    "no Status, basic code only": (
        report(status=None, diagnostic="smtp; 550 mailbox unavailable"),
        HARD,
        "5.0.0",
    ),
    "spam filter": (
        report(status="5.7.1", diagnostic="smtp; 554 5.7.1 rejected as spam"),
        POLICY,
        "5.7.1",
    ),
    "our sender domain": (
        report(status="5.1.8", diagnostic="smtp; 553 5.1.8 sender domain does not exist"),
        POLICY,
        "5.1.8",
    ),
    "RFC 6533 global": (
        report(
            status="5.1.1",
            diagnostic="smtp; 550 5.1.1 unknown",
            part="message/global-delivery-status",
            recipient="jörg@bücher.example",
        ),
        HARD,
        "5.1.1",
    ),
}


@pytest.mark.parametrize("name", MTAS)
def test_delivery_status_notifications_of_every_common_mta(name: str) -> None:
    data, kind, status = MTAS[name]
    [finding] = read_report(data).findings
    assert (finding.kind, finding.status) == (kind, status)
    assert finding.email is not None and finding.email == finding.email.lower()
    assert finding.diagnostic and not finding.diagnostic.startswith("smtp;")


def test_a_success_report_is_not_a_bounce() -> None:
    data = report(status="2.0.0", action="delivered", diagnostic="smtp; 250 ok")
    assert read_report(data).findings == []


@pytest.mark.parametrize(
    ("headers", "subject"),
    [
        ("Auto-Submitted: auto-replied\r\n", "Re: World View"),
        ("X-Autoreply: yes\r\n", "Re: World View"),
        ("Precedence: auto_reply\r\n", "Re: World View"),
        ("", "Out of Office: back on Monday"),
        ("", "Automatic reply: World View"),
        ("", "Abwesenheitsnotiz: World View"),
        ("", "Réponse automatique : World View"),
    ],
)
def test_auto_replies_are_told_apart(headers: str, subject: str) -> None:
    data = f"From: ann@example.org\r\n{headers}Subject: {subject}\r\n\r\nI am away.\r\n"
    [finding] = read_report(data.encode()).findings
    assert finding.kind is BounceKind.auto_reply


def test_an_ordinary_mail_is_neither_bounce_nor_auto_reply() -> None:
    data = b"From: ann@example.org\r\nAuto-Submitted: no\r\nSubject: hi\r\n\r\nThanks!\r\n"
    assert read_report(data).findings == []


def test_an_arf_report_quoting_only_headers_names_the_complaint_and_the_original() -> None:
    data = (
        b"From: staff@hotmail.com\r\nSubject: complaint about message from 192.0.2.1\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="fb"\r\n'
        b"\r\n--fb\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        b"\r\n--fb\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: abuse\r\nUser-Agent: Hotmail FBL\r\nVersion: 1\r\n"
        b"\r\n--fb\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"From: World View <worldview@news.example.com>\r\nTo: masked@example.net\r\n"
        b"List-Unsubscribe: <https://news.example.com/unsubscribe/7.abc.def>\r\n"
        b"\r\n--fb--\r\n"
    )
    read = read_report(data)
    [finding] = read.findings
    assert finding.kind is BounceKind.complaint and finding.email is None
    assert (
        read.original is not None and "unsubscribe/7.abc.def" in read.original["List-Unsubscribe"]
    )


def test_status_classes() -> None:
    assert classify_status("5.1.1") is BounceKind.hard
    assert classify_status("5.4.4") is BounceKind.hard  # no such domain
    assert classify_status("5.7.26") is BounceKind.policy  # DMARC
    assert classify_status("4.2.2") is BounceKind.soft
    assert classify_status("5.1.1", action="delayed") is BounceKind.soft
    assert classify_status(None) is BounceKind.soft


@hypothesis.settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=2000)
    | st.builds(
        lambda head, body: head + b"\r\n\r\n" + body,
        st.sampled_from(
            [
                b'Content-Type: multipart/report; report-type=delivery-status; boundary="x"',
                b"Content-Type: multipart/report; report-type=feedback-report; boundary=",
                b"Content-Type: message/delivery-status",
                b"Subject: =?utf-8?b?////?=\r\nAuto-Submitted: \xff",
            ]
        ),
        st.binary(max_size=1000),
    )
)
def test_any_bytes_at_all_are_read_without_an_exception(data: bytes) -> None:
    read = read_report(data)
    assert all(isinstance(f.kind, BounceKind) for f in read.findings)

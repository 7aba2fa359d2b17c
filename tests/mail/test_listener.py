"""The SMTP servers' socket (service/mail/listener.py): bound before the server starts, on
any address the operator names, IPv4 or IPv6."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from service.mail import capture
from service.mail.listener import listen


def _ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


def _deliver(host: str, port: int, to: str) -> None:
    with smtplib.SMTP(host, port, timeout=5) as client:
        client.sendmail("a@example.org", [to], f"Subject: to {to}\r\n\r\nhello\r\n".encode())


@needs_ipv6
@pytest.mark.parametrize(
    ("host", "reached_at"),
    [("::1", ["::1"]), ("::", ["::1", "127.0.0.1"]), ("", ["::1", "127.0.0.1"])],
)
def test_a_server_listens_on_an_ipv6_address_or_on_every_address(
    tmp_path: Path, host: str, reached_at: list[str]
) -> None:
    if host in ("", "::") and not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack sockets here")
    server = capture.CaptureServer(tmp_path / "outbox", port=0, host=host)
    server.start()
    try:
        for address in reached_at:
            _deliver(address, server.port, f"reader@{address.replace(':', 'x')}.example")
    finally:
        server.stop()
    subjects = sorted(mail.subject for mail in capture.listing(tmp_path / "outbox"))
    assert subjects == sorted(f"to reader@{a.replace(':', 'x')}.example" for a in reached_at)


def test_a_name_that_does_not_resolve_is_an_os_error() -> None:
    with pytest.raises(socket.gaierror):  # an OSError: the commands' one-line error
        listen("no-such-host.invalid", 0)


def test_a_stopped_server_frees_its_port_for_the_next_one(tmp_path: Path) -> None:
    first = capture.CaptureServer(tmp_path / "outbox", port=0)
    first.start()
    port = first.port
    _deliver("127.0.0.1", port, "before@example.org")
    first.stop()
    again = capture.CaptureServer(tmp_path / "outbox", port=port)  # what a restart does
    again.start()
    try:
        _deliver("127.0.0.1", port, "after@example.org")
    finally:
        again.stop()
    assert len(capture.listing(tmp_path / "outbox")) == 2

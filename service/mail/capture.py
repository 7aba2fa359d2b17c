"""The embedded capture server: a real SMTP server that keeps mail as .eml files instead
of delivering it, so a newcomer sees every mail at /dev/outbox with no mail server; and
smtp_target, which picks it or the configured relay for a process."""

from __future__ import annotations

import contextlib
import email
import email.policy
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from .smtp import SmtpTarget, relay_target

if TYPE_CHECKING:  # aiosmtpd is imported where a capture server starts: a send to a relay
    from aiosmtpd.smtp import SMTP as SMTPServer  # never loads it
    from aiosmtpd.smtp import Envelope, Session

    from .listener import BoundController

log = logging.getLogger(__name__)
NAME_CHARS = frozenset("0123456789abcdef-.eml")


class _SaveToFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, _server: SMTPServer, _session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        for rcpt in envelope.rcpt_tos:
            # What a delivery agent adds on final delivery (RFC 5321 4.4).
            head = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n".encode()
            save(self.folder, head + content)
        return "250 OK: captured, not delivered"


def save(folder: Path, data: bytes) -> Path:
    """Write one captured mail into `folder` atomically; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.eml"
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    return tmp.replace(folder / name)


def _answers_smtp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            return sock.recv(4).startswith(b"220")
    except OSError:
        return False


class CaptureServer:
    """aiosmtpd on 127.0.0.1, in its own thread; shared when another process runs it."""

    def __init__(self, folder: Path, port: int, host: str = "127.0.0.1") -> None:
        self.folder, self.host, self.port = folder, host, port
        self._controller: BoundController | None = None

    def start(self) -> None:
        """Listen on the port, or share the capture server already there."""
        if self.port and _answers_smtp(self.host, self.port):
            log.info(
                "capture SMTP server already running on %s:%s; sharing it", self.host, self.port
            )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        from .listener import BoundController

        controller = BoundController(  # port 0: a free one, ours from the start
            _SaveToFolder(self.folder),
            hostname=self.host,
            port=self.port,
            server_hostname="broadside-capture",
            ready_timeout=10,
        )
        controller.start()
        self._controller = controller
        self.port = controller.port
        log.warning(
            "mail is being CAPTURED, not delivered: set BROADSIDE_SMTP_URL to deliver; "
            "read it at /dev/outbox (files in %s)",
            self.folder,
        )

    def stop(self) -> None:
        """Stop listening (if this process started the server)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass(frozen=True)
class CapturedMail:
    """One captured mail, as the /dev/outbox viewer shows it."""

    name: str
    message: EmailMessage

    @property
    def subject(self) -> str:
        """The decoded Subject."""
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        """The decoded To."""
        return str(self.message.get("To", ""))

    @property
    def date(self) -> str:
        """The Date header."""
        return str(self.message.get("Date", ""))

    def part(self, subtype: str) -> str | None:
        """The decoded text of the `subtype` part (plain, html), if there is one."""
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else None  # type: ignore[attr-defined]


def read(folder: Path, name: str) -> CapturedMail | None:
    """One captured mail by file name; None for names that are not ours."""
    if not set(name) <= NAME_CHARS or not name.endswith(".eml") or "/" in name:
        return None
    path = folder / name
    if not path.is_file():
        return None
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return CapturedMail(name, message)  # type: ignore[arg-type]


def listing(folder: Path, limit: int = 200) -> list[CapturedMail]:
    """The newest captured mails first."""
    if not folder.is_dir():
        return []
    names = sorted((p.name for p in folder.glob("*.eml")), reverse=True)[:limit]
    return [mail for name in names if (mail := read(folder, name)) is not None]


@contextlib.contextmanager
def smtp_target(settings: Settings) -> Iterator[SmtpTarget]:
    """The configured relay; without one, the capture server (started, or shared with the
    process that already runs it on CAPTURE_PORT)."""
    relay = relay_target(settings)
    if relay is not None:
        yield relay
        return
    capture = CaptureServer(settings.outbox_dir, settings.capture_port)
    capture.start()
    try:
        yield SmtpTarget.local(capture.port, settings.smtp_timeout)
    finally:
        capture.stop()

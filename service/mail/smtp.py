"""The one place that talks SMTP: connections, hand-off of bytes, and sorting failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from dataclasses import dataclass
from enum import StrEnum

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

from ..config import RelayUrl, Settings
from .wire import END_OF_DATA, Stuffed

log = logging.getLogger(__name__)
QUIT_TIMEOUT = 5.0
# The aiosmtplib releases whose protocol internals `_hand_over` was tested against (its
# command lock, its reply parser and buffer, read for pipelined replies); any other release
# goes through sendmail().
LEAN_TESTED_VERSIONS = frozenset({"5.1.3"})


class Fault(StrEnum):
    """Whose problem a failed hand-off is; it decides what happens to the reader."""

    recipient = "recipient"  # this mailbox cannot take mail: the reader is suppressed
    relay = "relay"  # the relay refuses us (credentials, policy, content): the operator's
    transient = "transient"  # 4xx, an outage, a timeout: try again later


@dataclass(eq=False)
class SmtpFailure(Exception):
    """A hand-off that did not succeed, sorted once (see `classify`)."""

    fault: Fault
    reason: str
    code: int | None = None
    connection_lost: bool = False
    status: str | None = None  # the reply's RFC 3463 code, when it gave one

    @property
    def permanent(self) -> bool:
        """Retrying will not help this recipient (the reader's mailbox is the problem)."""
        return self.fault is Fault.recipient

    def __str__(self) -> str:
        return self.reason


# RFC 3463 enhanced status codes: class.subject.detail at the start of the reply text.
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
# X.1.x is about addresses and X.2.x about the mailbox, but 5.1.7/5.1.8 name the SENDER's
# address or domain (Postfix's reject_unknown_sender_domain answers RCPT with 550 5.1.8).
_SENDER_DETAILS = frozenset({(1, 7), (1, 8)})
# RFC 5321 4.2.2 basic codes that name the mailbox, for relays without enhanced codes:
# 550 mailbox unavailable, 551 user not local, 553 mailbox name not allowed. 552 is left out:
# at RCPT it also means "too many recipients" on older relays.
_MAILBOX_CODES = frozenset({550, 551, 553})


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 status code (e.g. "5.1.1") at the start of a reply's text, if any."""
    found = _ENHANCED.match(text)
    return None if found is None else ".".join(found.groups())


def sort_reply(stage: str, code: int, message: str) -> Fault:
    """Design rule 3: a 5xx is the reader's only when it is about their mailbox, at RCPT.
    Everything else a relay refuses with 5xx (relay access denied, bad HELO, a paused
    account, a content filter at DATA) is about us, and must not suppress the reader."""
    if code < 500:
        return Fault.transient
    if stage != "RCPT":
        return Fault.relay
    enhanced = _ENHANCED.match(message)
    if enhanced is None:
        return Fault.recipient if code in _MAILBOX_CODES else Fault.relay
    subject, detail = int(enhanced.group(2)), int(enhanced.group(3))
    if subject in (1, 2) and (subject, detail) not in _SENDER_DETAILS:
        return Fault.recipient
    return Fault.relay


def classify(exc: BaseException) -> SmtpFailure:
    """Sort an aiosmtplib or socket error into a recipient, relay or transient failure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        if first is None:
            return SmtpFailure(Fault.relay, f"RCPT refused: {exc}")
        return _reply("RCPT", first.code, first.message)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _reply("RCPT", exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return _reply("MAIL FROM", exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return _reply("AUTH", exc.code, exc.message, connection_lost=True)
    if isinstance(exc, aiosmtplib.SMTPHeloError):
        return _reply("EHLO", exc.code, exc.message, connection_lost=True)
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return _reply("connect", exc.code, exc.message, connection_lost=True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return SmtpFailure(Fault.transient, f"connection failed: {exc}", None, True)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return SmtpFailure(Fault.transient, f"timeout: {exc or 'no answer'}", None, True)
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return _reply("DATA", exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # RFC 5321 4.2.2: 421 means the server is closing the channel.
        return _reply("SMTP", exc.code, exc.message, connection_lost=exc.code == 421)
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address it cannot write
        return SmtpFailure(Fault.recipient, f"address cannot be sent: {exc}"[:1000])
    if isinstance(exc, OSError | aiosmtplib.SMTPException):
        return SmtpFailure(Fault.transient, f"connection failed: {exc}", None, True)
    raise exc


def _reply(stage: str, code: int, message: str, *, connection_lost: bool = False) -> SmtpFailure:
    reason = f"{stage} {code}: {message}"[:1000]
    fault = sort_reply(stage, code, message)
    return SmtpFailure(fault, reason, code, connection_lost, enhanced_status(message))


def lean_supported(version: str = aiosmtplib.__version__) -> bool:
    """Whether `_hand_over` may drive this aiosmtplib's protocol directly."""
    return version in LEAN_TESTED_VERSIONS


async def _hand_over(
    smtp: aiosmtplib.SMTP,
    envelope_from: str,
    recipient: str,
    mail: Stuffed,
    after: asyncio.Future[None] | None = None,
) -> None:
    """One mail transaction (MAIL, RCPT, DATA) through aiosmtplib's own protocol, with bytes
    stuffed beforehand: sendmail() would normalise and stuff the 20 KB again for every reader,
    more than half of its cost per message (docs/BENCHMARKS.md). The same replies
    raise the same exceptions as sendmail(), so `classify` sorts them alike; a refusal resets
    the envelope with RSET, as sendmail() does. A relay that offers PIPELINING (RFC 2920)
    gets MAIL, RCPT and DATA in one write, then the message: two round trips instead of
    four. With `after`, the message goes over whole but for its end, which waits for
    `after`."""
    sender, rcpt = _command_address(envelope_from), _command_address(recipient)
    if not (sender.isascii() and rcpt.isascii()):
        await _done(after)
        await smtp.sendmail(envelope_from, [recipient], mail.message())  # SMTPUTF8 if offered
        return
    if smtp.is_ehlo_or_helo_needed:
        await smtp.ehlo()
    protocol = smtp.protocol
    if not isinstance(protocol, SMTPProtocol) or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    size = f" SIZE={mail.size}" if smtp.supports_extension("size") else ""
    envelope = Envelope(
        f"MAIL FROM:{sender}{size}\r\n".encode(),
        f"RCPT TO:{rcpt}\r\n".encode(),
        envelope_from,
        recipient,
    )
    # One timer for the whole transaction instead of aiosmtplib's wait_for() per reply: it
    # must be over within twice SMTP_TIMEOUT, or the connection is dropped.
    patience = None if smtp.timeout is None else 2 * smtp.timeout
    async with asyncio.timeout_at(
        None if patience is None else asyncio.get_running_loop().time() + patience
    ) as timer:
        try:
            async with protocol._command_lock:  # the lock execute_command takes
                if smtp.supports_extension("pipelining"):
                    await _open_pipelined(protocol, envelope)
                else:
                    await _open(protocol, envelope)
                protocol._response_pending = True
                if after is None:
                    protocol.write(mail.data)
                else:
                    await _end_after(smtp, protocol, mail.data, after, timer)
                reply = await protocol.read_response()
                if reply.code != 250:
                    raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        except aiosmtplib.SMTPResponseException:
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
                await smtp.rset(timeout=None)
            raise


@dataclass(frozen=True)
class Envelope:
    """One transaction's MAIL and RCPT command lines, and the addresses they name."""

    mail: bytes
    rcpt: bytes
    sender: str
    recipient: str

    def check_mail(self, reply: SMTPResponse) -> None:
        """Raise as sendmail() would when MAIL is refused."""
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, self.sender)

    def check_rcpt(self, reply: SMTPResponse) -> None:
        """Raise as sendmail() would when RCPT is refused."""
        if reply.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, self.recipient)


async def _open(protocol: SMTPProtocol, envelope: Envelope) -> None:
    """MAIL, RCPT and DATA, one reply per write, until the relay asks for the message."""
    envelope.check_mail(await _command(protocol, envelope.mail))
    envelope.check_rcpt(await _command(protocol, envelope.rcpt))
    _ready_for_data(await _command(protocol, b"DATA\r\n"))


async def _open_pipelined(protocol: SMTPProtocol, envelope: Envelope) -> None:
    """MAIL, RCPT and DATA in one write (RFC 2920: DATA ends the group), then their three
    replies. A refused MAIL or RCPT makes the relay refuse DATA too (503 or 554); one that
    asks for the message all the same gets none: the connection is dropped, which delivers
    nothing (RFC 5321 4.1.1.4), and the refusal is raised."""
    protocol._response_pending = True
    protocol.write(envelope.mail + envelope.rcpt + b"DATA\r\n")
    mail, rcpt, data = await _replies(protocol, 3)
    try:
        envelope.check_mail(mail)
        envelope.check_rcpt(rcpt)
    except aiosmtplib.SMTPResponseException:
        if data.code == 354:
            _drop(protocol)
        raise
    _ready_for_data(data)


async def _command(protocol: SMTPProtocol, line: bytes) -> SMTPResponse:
    protocol._response_pending = True
    protocol.write(line)
    return await protocol.read_response()


async def _replies(protocol: SMTPProtocol, count: int) -> list[SMTPResponse]:
    """The replies to `count` commands written at once, in order. aiosmtplib's protocol
    hands over one reply per arrival; the ones that came with it wait in its buffer (its
    parser is the one place that reads them). Between two replies this coroutine does not
    yield, so a reply arriving later always finds a reader waiting for it."""
    replies = [await protocol.read_response()]
    while len(replies) < count:
        buffered = protocol._read_response_from_buffer()
        replies.append(buffered if buffered is not None else await protocol.read_response())
    return replies


def _ready_for_data(reply: SMTPResponse) -> None:
    if reply.code != 354:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


def _drop(protocol: SMTPProtocol) -> None:
    if isinstance(protocol.transport, asyncio.Transport):
        protocol.transport.abort()


class Unended(Exception):
    """A message was not ended, so not accepted: what its end waited for failed (its
    __cause__), and the connection was dropped mid-DATA."""


async def _end_after(
    smtp: aiosmtplib.SMTP,
    protocol: SMTPProtocol,
    data: bytes,
    after: asyncio.Future[None],
    timer: asyncio.Timeout,
) -> None:
    """Write DATA but its final ".", and write that only once `after` is done: the relay
    cannot accept the message before then. If `after` fails (or the wait is cancelled),
    drop the connection instead: a session cut before the end of DATA delivers nothing
    (RFC 5321 4.1.1.4)."""
    end = len(data) - len(END_OF_DATA)
    assert data[end:] == END_OF_DATA, "a Stuffed message ends with its final dot"
    protocol.write(memoryview(data)[:end])  # type: ignore[arg-type]
    deadline = timer.when()
    timer.reschedule(None)  # our own wait is not the relay's silence
    waited = asyncio.get_running_loop().time()
    try:
        await asyncio.shield(after)  # ours is only the wait: cancelling it leaves `after` be
    except Exception as exc:
        smtp.close()
        raise Unended(str(exc)) from exc
    except BaseException:
        smtp.close()
        raise
    if deadline is not None:
        timer.reschedule(deadline + asyncio.get_running_loop().time() - waited)
    protocol.write(END_OF_DATA)


async def _done(after: asyncio.Future[None] | None) -> None:
    """Wait for `after` where the message cannot be held at its end (sendmail())."""
    if after is not None:
        await asyncio.shield(after)


# What aiosmtplib's execute_command() refuses in a command's argument: no command injection.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# An address that can go on MAIL/RCPT as it is: no space, control, bracket, quote or
# separator. Anything else goes through aiosmtplib's own (slower) parsing and checks.
_PLAIN_ADDRESS = re.compile(
    r"[^\s<>()\[\],;:\\\"\x00-\x1f\x7f@]+@[^\s<>()\[\],;:\\\"\x00-\x1f\x7f@]+"
)


def _command_address(address: str) -> str:
    """<address> for a MAIL or RCPT command; raises ValueError as aiosmtplib would."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    quoted = quote_address(address)
    if _CONTROL.search(quoted):
        raise ValueError("Command arg contains a prohibited control character")
    return quoted


@dataclass(frozen=True)
class SmtpTarget:
    """Where mail goes (the relay, or the embedded capture server) and how long to wait."""

    endpoint: RelayUrl
    timeout: float = 30.0

    @classmethod
    def local(cls, port: int, timeout: float = 30.0) -> SmtpTarget:
        """An SMTP server on this machine without login (the capture server, a test sink)."""
        return cls(RelayUrl("127.0.0.1", port), timeout)


def relay_target(settings: Settings) -> SmtpTarget | None:
    """The configured relay (SMTP_URL), or None when mail is to be captured instead."""
    relay = settings.relay
    return SmtpTarget(relay, settings.smtp_timeout) if relay is not None else None


class RelayHealth:
    """Whether the relay is in trouble, so that an outage is logged once when it starts and
    once when it ends, however many hand-offs see it."""

    def __init__(self, what: str) -> None:
        self.what = what  # "send 12", "outbox": who is waiting on the relay
        self.in_trouble = False

    def failed(self, failure: SmtpFailure) -> None:
        """A hand-off failed; the first failure that is about the relay starts an outage."""
        if self.in_trouble or not (failure.connection_lost or failure.fault is Fault.relay):
            return
        self.in_trouble = True
        log.warning("SMTP relay trouble (%s); %s waits and retries", failure, self.what)

    def succeeded(self) -> None:
        """A hand-off went through; an outage in progress is over."""
        if self.in_trouble:
            self.in_trouble = False
            log.info("SMTP relay reachable again; %s continues", self.what)


class SmtpConnection:
    """One reusable connection to the relay; reconnects when the previous one is gone,
    and after `max_messages` hand-offs so that a long send spreads over fresh sessions."""

    def __init__(self, target: SmtpTarget, max_messages: int = 1000) -> None:
        self.target = target
        self.max_messages = max_messages
        self._smtp: aiosmtplib.SMTP | None = None
        self._count = 0
        self.lean = lean_supported()

    async def _connect(self) -> aiosmtplib.SMTP:
        t, timeout = self.target.endpoint, self.target.timeout
        smtp = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            username=t.username,
            password=t.password,
            use_tls=t.implicit_tls,
            start_tls=t.starttls,
            timeout=timeout,
            local_hostname=socket.getfqdn() or "localhost",
        )
        await smtp.connect()
        self._count = 0
        return smtp

    async def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes | Stuffed,
        *,
        after: asyncio.Future[None] | None = None,
    ) -> None:
        """Hand one message to the relay, or raise SmtpFailure. A message already `Stuffed`
        goes over as it is (through sendmail() on an aiosmtplib release not tested here).

        With `after` (the previous message's outcome being recorded), this message is sent
        while that goes on, but not ended, and so not accepted, until it is done: the two
        overlap, and still no more than one accepted message per connection is unrecorded at
        any instant. If `after` fails, this raises Unended and the message is not sent."""
        try:
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._connect()
            elif self._count >= self.max_messages:
                await self.close()
                self._smtp = await self._connect()
            self._count += 1
            if not isinstance(data, Stuffed):
                await _done(after)
                await self._smtp.sendmail(envelope_from, [recipient], data)
            elif self.lean:
                await _hand_over(self._smtp, envelope_from, recipient, data, after)
            else:
                await _done(after)
                await self._smtp.sendmail(envelope_from, [recipient], data.message())
        except Unended:
            self._smtp = None  # dropped mid-DATA
            raise
        except Exception as exc:
            failure = classify(exc)
            if failure.connection_lost:
                await self.abort()
            raise failure from exc

    async def hello(self) -> None:
        """Open a session as a hand-off would (TLS, login) and make sure the relay answered
        EHLO (or HELO), or raise SmtpFailure."""
        try:
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._connect()
            if self._smtp.is_ehlo_or_helo_needed:
                await self._smtp.ehlo()
        except Exception as exc:
            await self.abort()
            raise classify(exc) from exc

    async def close(self) -> None:
        """QUIT politely (briefly); a dead or silent connection is just dropped."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit(timeout=QUIT_TIMEOUT)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                smtp.close()

    async def abort(self) -> None:
        """Drop the connection without QUIT (its state is unknown)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def __aenter__(self) -> SmtpConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_rest: object) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            await self.abort()  # cancelled mid-conversation: the session state is unknown
        else:
            await self.close()


async def probe(target: SmtpTarget) -> None:
    """Whether the relay answers: connect, EHLO (TLS and login as configured), QUIT, all
    within the target's timeout; SmtpFailure says what went wrong."""
    async with SmtpConnection(target) as conn:
        try:
            async with asyncio.timeout(target.timeout):
                await conn.hello()
        except TimeoutError as exc:
            await conn.abort()  # no QUIT to a relay that has stopped answering
            raise classify(exc) from exc

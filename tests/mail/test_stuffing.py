"""The column (and the weekly digest) goes to the relay as bytes stuffed once per mail:
whatever a reader's values are, what goes on the wire is exactly what aiosmtplib's sendmail()
would have written."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

import aiosmtplib
import dkim
import hypothesis
import pytest
from aiosmtplib.email import quote_address
from hypothesis import given
from hypothesis import strategies as st

from service.columns.digest import prepare_digest
from service.columns.mail import PreparedColumn, PreparedMail, prepare_column
from service.columns.model import Block, Section
from service.columns.view import ColumnView
from service.config import TEMPLATES_DIR
from service.mail import dkim as signing
from service.mail import smtp
from service.mail.smtp import Fault, SmtpConnection, SmtpFailure, SmtpTarget
from service.mail.wire import Stuffed
from tests.columns.test_mail import reader, seed_like_column, settings_for
from tests.smtp_server import SmtpTestServer

# Lines that start with "." once encoded: a paragraph of dots wraps (quoted-printable soft
# breaks at 76) into continuation lines that start with "."; ".NET" starts a text line.
DOTTY = ".NET and .com: " + "." * 300 + " the end."


def dotty_view(day: dt.date = dt.date(2016, 2, 4)) -> ColumnView:
    parsed = seed_like_column()
    first = parsed.sections[0]
    dotted = Section(first.heading, [Block("paragraph", DOTTY, DOTTY), *first.blocks])
    parsed = dataclasses.replace(parsed, sections=[dotted, *parsed.sections[1:]])
    return ColumnView.from_parsed(parsed, slug=f"{day.isoformat()}-dots", date=day)


@pytest.fixture(scope="module")
def dotty(tmp_path_factory: pytest.TempPathFactory) -> PreparedColumn:
    settings = settings_for(tmp_path_factory.mktemp("stuffing"))
    return prepare_column(dotty_view(), settings, templates_dir=TEMPLATES_DIR)


@pytest.fixture(scope="module", params=["column", "digest"])
def dotty_mail(
    request: pytest.FixtureRequest, dotty: PreparedColumn, tmp_path_factory: pytest.TempPathFactory
) -> PreparedMail:
    """The dotted column, and a weekly digest whose opening paragraphs are the dotted one."""
    if request.param == "column":
        return dotty
    settings = settings_for(tmp_path_factory.mktemp("stuffing-digest"))
    week = [dotty_view(dt.date(2016, 2, day)) for day in (1, 2, 4)]
    return prepare_digest(week, settings, templates_dir=TEMPLATES_DIR)


def test_the_mail_itself_has_lines_that_need_stuffing(dotty_mail: PreparedMail) -> None:
    data = dotty_mail.message_bytes(**reader())
    assert any(line.startswith(b".") for line in data.split(b"\r\n"))


TOKEN = st.text("abcXYZ019-_.~", min_size=1, max_size=180)
NAMES = st.text(st.sampled_from(".a Zé\u00a0<>&\"'\r\n\t=.."), max_size=160) | st.text(max_size=60)


@hypothesis.settings(max_examples=150, deadline=None)
@given(
    name=NAMES,
    unsubscribe=TOKEN,
    feedback=TOKEN,
    preferences=TOKEN,
    local=st.from_regex(r"\.?[a-z.]{1,40}", fullmatch=True),
)
def test_stuffed_bytes_are_what_sendmail_would_send(
    dotty_mail: PreparedMail,
    name: str,
    unsubscribe: str,
    feedback: str,
    preferences: str,
    local: str,
) -> None:
    values = reader(
        name=name,
        to=f"{local}@example.org",
        unsubscribe_url=f"https://news.example.com/unsubscribe/{unsubscribe}",
        feedback_url=f"https://news.example.com/feedback?t={feedback}",
        preferences_url=f"https://news.example.com/preferences/{preferences}",
    )
    mailto = f"unsubscribe+{unsubscribe}@example.com"
    wire = dotty_mail.stuffed(**values, unsubscribe_mailto=mailto)
    plain = dotty_mail.message_bytes(**values, unsubscribe_mailto=mailto)
    assert wire == Stuffed.of(plain)  # data and SIZE alike
    assert wire.message() == plain
    assert b"\r\n.\r\n" not in wire.data[:-3]  # no early end of DATA, whatever the values


def test_a_signed_copy_is_stuffed_after_signing_and_still_verifies(
    dotty: PreparedColumn,
) -> None:
    key = signing.new_key("rsa")
    signer = signing.DkimSigner("news.example.com", [signing._Key(b"sel", b"rsa-sha256", key)])
    public = signing.public_record(key)
    wire = dotty.stuffed(**reader(name=".Ada " + "." * 90), signer=signer)
    assert wire == Stuffed.of(wire.message())
    assert wire.message().startswith(b"DKIM-Signature:")
    assert dkim.verify(wire.message(), dnsfunc=lambda *_a, **_k: public.encode())


# On the wire: a real SMTP server sees the message as sent, whichever way it was handed over


@pytest.fixture(params=[True, False], ids=["pipelining", "one-reply-per-write"])
def server(request: pytest.FixtureRequest) -> SmtpTestServer:
    """aiosmtpd, offering PIPELINING (RFC 2920) or not: the hand-off takes either path."""
    server = SmtpTestServer()
    server.handler.pipelining = request.param
    server.start()
    yield server
    server.stop()


def send_all(
    server: SmtpTestServer, mails: list[tuple[str, Stuffed | bytes]], *, lean: bool
) -> None:
    async def run() -> None:
        async with SmtpConnection(SmtpTarget.local(server.port, timeout=10)) as conn:
            conn.lean = lean
            for to, data in mails:
                await conn.send("bounces@news.example.com", to, data)

    asyncio.run(run())


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sendmail-fallback"])
def test_the_server_receives_exactly_the_message(
    server: SmtpTestServer, dotty: PreparedColumn, lean: bool
) -> None:
    names = ["Ada", "", ".Grace " + "." * 100]
    mails = [(f"r{i}@example.org", dotty.stuffed(**reader(name=n))) for i, n in enumerate(names)]
    send_all(server, mails, lean=lean)
    got = server.wait_for(3)
    assert [(r.rcpt_tos, r.data) for r in got] == [
        ([to], dotty.message_bytes(**reader(name=n)))
        for (to, _), n in zip(mails, names, strict=True)
    ]


def test_the_lean_hand_off_declares_the_size_sendmail_would(
    server: SmtpTestServer, dotty: PreparedColumn
) -> None:
    seen: list[list[str]] = []
    original = server.handler.handle_DATA

    async def record(srv, session, envelope):  # type: ignore[no-untyped-def]
        seen.append(list(envelope.mail_options))
        return await original(srv, session, envelope)

    server.handler.handle_DATA = record  # type: ignore[method-assign]
    wire = dotty.stuffed(**reader())
    send_all(server, [("ada@example.org", wire)], lean=True)
    assert seen == [[f"SIZE={len(wire.message())}"]]


def test_a_refused_reader_leaves_the_connection_usable(
    server: SmtpTestServer, dotty: PreparedColumn
) -> None:
    """RCPT refused: the failure is the reader's, the envelope is reset (RSET), and the next
    reader on the same connection gets their mail."""
    server.reply_to_rcpt("gone@example.org", "550 5.1.1 no such user")
    failures: list[SmtpFailure] = []

    async def run() -> None:
        async with SmtpConnection(SmtpTarget.local(server.port, timeout=10)) as conn:
            assert conn.lean
            for to in ("gone@example.org", "ada@example.org"):
                try:
                    await conn.send("b@news.example.com", to, dotty.stuffed(**reader(to=to)))
                except SmtpFailure as failure:
                    failures.append(failure)

    asyncio.run(run())
    assert [(f.fault, f.code, f.status) for f in failures] == [(Fault.recipient, 550, "5.1.1")]
    assert [r.rcpt_tos for r in server.wait_for(1)] == [["ada@example.org"]]


@pytest.mark.parametrize(
    ("reply", "fault"),
    [("554 5.7.1 content rejected", Fault.relay), ("451 4.3.0 try later", Fault.transient)],
)
def test_a_refusal_at_data_is_sorted_as_sendmail_would_be(
    server: SmtpTestServer, dotty: PreparedColumn, reply: str, fault: Fault
) -> None:
    server.handler.data_reply = reply
    with pytest.raises(SmtpFailure) as caught:
        send_all(server, [("ada@example.org", dotty.stuffed(**reader()))], lean=True)
    assert (caught.value.fault, caught.value.code) == (fault, int(reply[:3]))


def test_an_address_that_cannot_go_on_a_command_line_is_refused_before_anything_is_sent(
    server: SmtpTestServer, dotty: PreparedColumn
) -> None:
    with pytest.raises(SmtpFailure) as caught:
        send_all(server, [("ada lovelace@example.org", dotty.stuffed(**reader()))], lean=True)
    assert caught.value.fault is Fault.recipient
    assert server.received == []


@pytest.mark.parametrize("address", ['"a\x01b"@example.org', "a\x7fb@example.org"])
def test_a_control_character_never_reaches_a_pipelined_command_line(
    server: SmtpTestServer, dotty: PreparedColumn, address: str
) -> None:
    """What execute_command() refused before the envelope went in one write: an address whose
    quoted form keeps a control character is the reader's, refused before anything is sent."""
    with pytest.raises(SmtpFailure) as caught:
        send_all(server, [(address, dotty.stuffed(**reader()))], lean=True)
    assert caught.value.fault is Fault.recipient and "control character" in caught.value.reason
    assert server.received == []


def test_only_a_tested_aiosmtplib_release_is_driven_directly() -> None:
    assert smtp.lean_supported(aiosmtplib.__version__)
    assert not smtp.lean_supported("99.0.0")


def test_a_connection_on_an_untested_release_falls_back_to_sendmail(
    monkeypatch: pytest.MonkeyPatch, server: SmtpTestServer, dotty: PreparedColumn
) -> None:
    monkeypatch.setattr(smtp, "LEAN_TESTED_VERSIONS", frozenset({"0.0.1"}))
    assert not SmtpConnection(SmtpTarget.local(server.port)).lean
    wire = dotty.stuffed(**reader())
    send_all(server, [("ada@example.org", wire)], lean=smtp.lean_supported())
    assert [r.data for r in server.wait_for(1)] == [wire.message()]


def test_stuffing_is_undone_exactly(tmp_path: Path) -> None:
    message = b"a\r\n.b\r\n..c\r\n.\r\nend"
    stuffed = Stuffed.of(message)
    assert stuffed.data == b"a\r\n..b\r\n...c\r\n..\r\nend\r\n.\r\n"
    assert stuffed.message() == message + b"\r\n" and stuffed.size == len(message) + 2


@hypothesis.settings(max_examples=1000)
@given(
    message=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"b\xff", b" "]))
)
def test_stuffing_any_bytes_is_what_aiosmtplib_does(message: list[bytes]) -> None:
    """The quick way for messages with CRLF line ends only, and the regular expressions for
    the rest, give what aiosmtplib's own normalising and stuffing give (its sendmail())."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    data = b"".join(message)
    normalized = normalize_message_line_endings(data)
    expected = PERIOD_REGEX.sub(b"..", normalized) + b".\r\n"
    assert Stuffed.of(data) == Stuffed(expected, len(normalized))


@hypothesis.settings(max_examples=500)
@given(address=st.emails() | st.text(max_size=40) | st.from_regex(r"[!-~]{1,20}@[!-~]{1,20}"))
def test_the_fast_address_check_agrees_with_aiosmtplib(address: str) -> None:
    """Where the quick check lets an address through as it is, aiosmtplib's own parsing
    gives the same command argument; anything else is left to aiosmtplib."""
    if smtp._PLAIN_ADDRESS.fullmatch(address):
        assert quote_address(address) == f"<{address}>"


def test_a_relay_that_stops_answering_times_out(
    server: SmtpTestServer, dotty: PreparedColumn
) -> None:
    """A transaction must be over within twice SMTP_TIMEOUT (sendmail() waits that long for
    each reply): a relay that stops answering is a transient failure that drops the
    connection, its state being unknown."""
    server.handler.data_delay = 2.0

    async def run() -> SmtpFailure:
        async with SmtpConnection(SmtpTarget.local(server.port, timeout=0.3)) as conn:
            try:
                await conn.send("b@news.example.com", "ada@example.org", dotty.stuffed(**reader()))
            except SmtpFailure as failure:
                assert conn._smtp is None  # dropped, not reused
                return failure
        raise AssertionError("the hand-off did not time out")

    failure = asyncio.run(run())
    assert (failure.fault, failure.connection_lost) == (Fault.transient, True)


class ScriptedRelay:
    """A relay written out by hand, for what aiosmtpd does not do: it offers PIPELINING,
    reads whatever has arrived, and answers every complete command in it in one write (as
    Postfix does), so several replies reach the client in one segment. RCPT gets `rcpt`,
    DATA `data` (354 even after a refused RCPT, when a test says so). It records each
    command with the number of the read it came in, and the messages it accepted."""

    def __init__(
        self, rcpt: str = "250 2.1.5 OK", data: str = "354 go ahead", mail: str = "250 2.1.0 OK"
    ) -> None:
        self.rcpt, self.data, self.mail = rcpt, data, mail
        self.commands: list[tuple[int, str]] = []
        self.messages: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> ScriptedRelay:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        buffer, reads, body = b"", 0, None
        while chunk := await reader.read(65536):
            reads += 1
            buffer += chunk
            replies: list[bytes] = []
            while True:
                if body is not None:  # inside DATA: up to the end of the message
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    lines = (body + buffer[: end + 2]).split(b"\r\n")  # undo the stuffing
                    self.messages.append(b"\r\n".join(x[1:] if x[:1] == b"." else x for x in lines))
                    buffer, body = buffer[end + 5 :], None
                    replies.append(b"250 2.0.0 queued")
                    continue
                line, crlf, rest = buffer.partition(b"\r\n")
                if not crlf:
                    break
                buffer = rest
                verb = line.decode().split(" ", 1)[0].split(":", 1)[0].upper()
                self.commands.append((reads, verb))
                if verb == "EHLO":
                    replies.append(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 10000000")
                elif verb == "MAIL":
                    replies.append(self.mail.encode())
                elif verb == "RCPT":
                    replies.append(self.rcpt.encode())
                elif verb == "DATA":
                    replies.append(self.data.encode())
                    body = b"" if self.data.startswith("354") else None
                elif verb == "QUIT":
                    replies.append(b"221 bye")
                else:  # RSET, NOOP
                    replies.append(b"250 2.0.0 OK")
            if replies:
                writer.write(b"".join(r + b"\r\n" for r in replies))
        writer.close()


def test_a_pipelining_relay_gets_the_envelope_in_one_write_and_its_replies_in_one_segment(
    dotty: PreparedColumn,
) -> None:
    """MAIL, RCPT and DATA go in one write; the relay's three replies come back in one
    segment, and the client reads every one of them from aiosmtplib's buffer."""
    names = ["Ada", ".Grace"]

    async def run() -> ScriptedRelay:
        async with ScriptedRelay() as relay:
            async with SmtpConnection(SmtpTarget.local(relay.port, timeout=5)) as conn:
                for i, name in enumerate(names):
                    await conn.send(
                        "b@news.example.com",
                        f"r{i}@example.org",
                        dotty.stuffed(**reader(name=name)),
                    )
            return relay

    relay = asyncio.run(run())
    assert relay.messages == [dotty.message_bytes(**reader(name=n)) for n in names]
    groups: dict[int, list[str]] = {}
    for read, verb in relay.commands:
        groups.setdefault(read, []).append(verb)
    assert [g for g in groups.values() if "MAIL" in g] == [["MAIL", "RCPT", "DATA"]] * 2


@pytest.mark.parametrize(
    ("data", "dropped"), [("554 5.5.1 no valid recipients", False), ("354 go ahead", True)]
)
def test_a_refused_reader_in_a_pipelined_group_gets_no_message(
    dotty: PreparedColumn, data: str, dropped: bool
) -> None:
    """RCPT refused in a pipelined group: the failure is the reader's. A relay that then
    asks for the message anyway gets none: the connection is dropped mid-DATA, which
    delivers nothing, and the next reader goes over a new one."""

    async def run() -> tuple[list[SmtpFailure], ScriptedRelay, bool]:
        failures: list[SmtpFailure] = []
        async with ScriptedRelay(rcpt="550 5.1.1 no such user", data=data) as relay:
            async with SmtpConnection(SmtpTarget.local(relay.port, timeout=5)) as conn:
                try:
                    await conn.send(
                        "b@news.example.com", "gone@example.org", dotty.stuffed(**reader())
                    )
                except SmtpFailure as failure:
                    failures.append(failure)
                kept = conn._smtp is not None and conn._smtp.is_connected
                relay.rcpt, relay.data = "250 2.1.5 OK", "354 go ahead"
                await conn.send("b@news.example.com", "ada@example.org", dotty.stuffed(**reader()))
            return failures, relay, kept

    failures, relay, kept = asyncio.run(run())
    assert [(f.fault, f.code, f.status) for f in failures] == [(Fault.recipient, 550, "5.1.1")]
    assert kept is not dropped
    assert relay.messages == [dotty.message_bytes(**reader())]


@pytest.mark.parametrize(
    ("reply", "fault"),
    [("451 4.3.2 try again later", Fault.transient), ("553 5.7.1 sender not allowed", Fault.relay)],
)
def test_a_refused_sender_in_a_pipelined_group_is_the_relays_problem_not_the_readers(
    dotty: PreparedColumn, reply: str, fault: Fault
) -> None:
    """MAIL refused in a pipelined group (the relay then refuses RCPT and DATA too): sorted
    as sendmail() would sort it, never as the reader's fault, and the envelope is reset."""

    async def run() -> tuple[SmtpFailure, ScriptedRelay]:
        async with ScriptedRelay(
            mail=reply, rcpt="503 5.5.1 need MAIL", data="503 5.5.1 need RCPT"
        ) as relay:
            async with SmtpConnection(SmtpTarget.local(relay.port, timeout=5)) as conn:
                with pytest.raises(SmtpFailure) as caught:
                    await conn.send(
                        "b@news.example.com", "ada@example.org", dotty.stuffed(**reader())
                    )
            return caught.value, relay

    failure, relay = asyncio.run(run())
    assert (failure.fault, failure.code) == (fault, int(reply[:3]))
    assert [verb for _, verb in relay.commands][:5] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET"]
    assert relay.messages == []

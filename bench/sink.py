"""An SMTP sink for benchmarks: accepts everything on loopback, counts it, reports on exit.

Runs in its own process (pinned to its own CPU by the caller) so that its cost is measured
apart from the client's. Writes a JSON stats file on SIGTERM/SIGINT: connections, messages,
recipients, bytes, unique recipients and duplicate deliveries. With `--data-delay S` it
answers each DATA only after S seconds, as a remote relay does (the scale-out figure: workers
that wait on the network must add up).

    python -m bench.sink --port 2525 --stats /tmp/sink.json [--data-delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counting:
    """aiosmtpd handler: accept every recipient and message, and count them."""

    def __init__(self, data_delay: float = 0.0) -> None:
        self.data_delay = data_delay
        self.per_rcpt: Counter[str] = Counter()
        self.connections = self.messages = self.recipients = self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        now = time.time()
        self.first = self.first or now
        self.last = now
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos)
        self.bytes += len(envelope.original_content or b"")
        self.per_rcpt.update(envelope.rcpt_tos)
        if self.data_delay:
            # Counted before the wait: a client that gives up meanwhile still sent it once.
            await asyncio.sleep(self.data_delay)
        return f"250 2.0.0 OK queued as {self.messages}"

    def stats(self) -> dict[str, Any]:
        cpu = os.times()
        return {
            "pid": os.getpid(),
            "connections": self.connections,
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.bytes,
            "unique_recipients": len(self.per_rcpt),
            "duplicate_deliveries": self.recipients - len(self.per_rcpt),
            "first_message_at": self.first,
            "last_message_at": self.last,
            "cpu_s": round(cpu.user + cpu.system, 3),
        }


class FastDataSMTP(SMTP):
    """aiosmtpd's server, counting connections and reading the DATA body in bulk.

    aiosmtpd 1.4 awaits once per body line; a sink that slow would measure itself rather
    than the client. Same checks and replies as aiosmtpd's smtp_DATA, without size limits.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.event_handler.connections += 1
        super().connection_made(transport)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None  # aiosmtpd sets it at HELO/EHLO, checked just above
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        buf = bytearray()
        while not (buf == b".\r\n" or buf.endswith(b"\r\n.\r\n")):
            try:
                buf += await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:  # a long stretch without ".\r\n"
                buf += await self._reader.readexactly(exc.consumed)
        body = bytes(buf[:-3])
        body = body[1:] if body.startswith(b".") else body  # un-dot-stuff (RFC 5321 4.5.2)
        content = body.replace(b"\r\n.", b"\r\n")
        envelope.content = envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


async def serve(port: int, stats_path: Path | None, data_delay: float = 0.0) -> None:
    handler = Counting(data_delay)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FastDataSMTP(
            handler,
            hostname="sink.localhost",
            ident="broadside-bench-sink",
            decode_data=False,
            data_size_limit=None,
        ),
        host="127.0.0.1",
        port=port,
        backlog=1024,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if stats_path is not None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(handler.stats()))
        os.replace(tmp, stats_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", type=Path, help="JSON stats file, written on exit")
    parser.add_argument(
        "--data-delay", type=float, default=0.0, help="seconds before answering each DATA"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.stats, args.data_delay))


if __name__ == "__main__":
    main()

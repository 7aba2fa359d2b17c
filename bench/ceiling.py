"""aiosmtplib's sendmail() ceiling: one prebuilt message blasted over K reused connections.

A command of its own, so that it is measured from outside exactly like `broadside send` and
`smtp-source` (wall time, CPU, peak RSS of the whole process). The message is the seed column
as the product builds it for one reader, DKIM-signed when the run signs: the per-message work
a send path cannot avoid is then the only difference between the two.

    python -m bench.ceiling --port 2525 --k 16 --messages 20000 --message column.eml \\
        --mail-from worldview@news.example.com
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import aiosmtplib

from .readers import reader_address


async def blast(port: int, k: int, messages: int, data: bytes, mail_from: str) -> int:
    """Send `data` to `messages` distinct recipients over `k` connections; how many went."""
    connections = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.localhost")
        for _ in range(k)
    ]
    await asyncio.gather(*(c.connect() for c in connections))
    todo = iter(range(messages))
    sent = 0

    async def deliver(smtp: aiosmtplib.SMTP) -> None:
        nonlocal sent
        for i in todo:  # one shared iterator: each connection takes the next recipient
            await smtp.sendmail(mail_from, [reader_address(i)], data)
            sent += 1

    await asyncio.gather(*(deliver(c) for c in connections))
    await asyncio.gather(*(c.quit() for c in connections))
    return sent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--k", type=int, required=True, help="reused connections")
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--message", type=Path, required=True, help="the prebuilt message")
    parser.add_argument("--mail-from", required=True)
    args = parser.parse_args(argv)
    data = args.message.read_bytes()
    sent = asyncio.run(blast(args.port, args.k, args.messages, data, args.mail_from))
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    main()

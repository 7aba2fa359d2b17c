"""The IMAP poller: for deployments whose bounces land in a mailbox, read it over TLS
(imaplib), hand each mail to the receiver's `process`, and remove it once recorded."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import imaplib
import logging
import ssl

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import ImapUrl
from ..context import AppContext
from .receiver import Route, process, route

log = logging.getLogger(__name__)
IMAP_TIMEOUT = 60.0
BATCH = 100  # mails per poll: a flood is read over several polls, not in one long session
# Where a delivery agent writes the envelope recipient (RFC 9228 Delivered-To, Postfix's
# X-Original-To, Exim's Envelope-To); To and Cc are the last resort.
RECIPIENT_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "to", "cc")
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def routes_of(ctx: AppContext, raw: bytes) -> list[Route]:
    """The routes a mail from the bounce mailbox came by, from the headers that name its
    envelope recipient; a mail naming none of our addresses is a bounce (it is in the
    bounce mailbox), without a token."""
    headers = _HEADERS.parsebytes(raw)
    for name in RECIPIENT_HEADERS:
        for value in headers.get_all(name) or []:
            for address in str(value).replace(",", " ").split():
                found = route(ctx.settings, address.strip("<>;"))
                if found is not None:
                    return [found]
    return [Route("bounce")]


def poll_once(engine: Engine, ctx: AppContext, url: ImapUrl) -> int:
    """Read up to BATCH mails from the mailbox, record each, and delete those recorded (a
    mail that could not be recorded stays for the next poll). Returns how many were read."""
    context = ssl.create_default_context()
    with imaplib.IMAP4_SSL(url.host, url.port, ssl_context=context, timeout=IMAP_TIMEOUT) as imap:
        imap.login(url.username, url.password)
        status, _ = imap.select(_quoted(url.mailbox))
        if status != "OK":
            raise imaplib.IMAP4.error(f"cannot open the mailbox {url.mailbox!r}")
        _status, found = imap.uid("SEARCH", "UNDELETED")
        uids = [uid.decode() for uid in (found[0] or b"").split()[:BATCH]]
        for uid in uids:
            _status, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if raw is None:
                continue
            process(engine, ctx, raw, routes_of(ctx, raw), source="imap")
            imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        if uids:
            imap.expunge()
        return len(uids)


async def poll_forever(engine: Engine, ctx: AppContext) -> None:
    """Poll BOUNCE_IMAP_URL every BOUNCE_IMAP_INTERVAL until cancelled; a failed poll is
    logged (once per kind of failure) and tried again at the next interval."""
    settings = ctx.settings
    assert settings.bounce_imap_url is not None
    url = ImapUrl.parse(settings.bounce_imap_url.get_secret_value())
    last_failure = ""
    while True:
        try:
            read = await asyncio.to_thread(poll_once, engine, ctx, url)
            if read:
                log.info("bounce mailbox %r: %s mails recorded", url, read)
            last_failure = ""
        except (OSError, imaplib.IMAP4.error, ssl.SSLError, SQLAlchemyError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if failure != last_failure:
                log.error("cannot read the bounce mailbox %r: %s", url, failure)
            last_failure = failure
        await asyncio.sleep(settings.bounce_imap_interval.total_seconds())


def _quoted(mailbox: str) -> str:
    """A mailbox name as an IMAP quoted string (RFC 3501 4.3)."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'

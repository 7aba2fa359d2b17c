"""The bounce receiver: an SMTP endpoint (aiosmtpd) that takes mail only for our bounce,
VERP, feedback-loop and mailto: unsubscribe addresses, and hands each mail to `process`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session as SqlSession

from ..config import Settings
from ..context import AppContext
from ..db import transaction
from ..mail.listener import BoundController
from ..models import Bounce, BounceKind
from ..tokens import UNSUBSCRIBE_LOCAL
from .record import Whom, attribute, record_bounce, subscriber_by_mail_token
from .report import Finding, read_report

log = logging.getLogger(__name__)
MAX_REPORT_BYTES = 10 * 1024 * 1024  # a DSN quotes at most our message (about 25 KB)
DEFAULT_PORT = 2526


@dataclass(frozen=True)
class Route:
    """What an address we accept mail for is for, and the token in it, if any."""

    kind: Literal["bounce", "unsubscribe"]
    token: str | None = None


def route(settings: Settings, address: str) -> Route | None:
    """The route for a recipient address, or None: we take no mail for anyone else.
    BOUNCE_LOCAL[+token]@BOUNCE_DOMAIN are bounces and feedback-loop reports (the token is a
    delivery's VERP token), unsubscribe+token@BOUNCE_DOMAIN is RFC 2369's mailto:, and the
    plain envelope sender takes bounces when no BOUNCE_DOMAIN is set."""
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    if settings.bounce_domain is not None and domain == settings.bounce_domain:
        base, _, token = local.partition("+")
        if base == settings.bounce_local:
            return Route("bounce", token or None)
        if base == UNSUBSCRIBE_LOCAL and token:
            return Route("unsubscribe", token)
        return None
    if f"{local}@{domain}" == settings.bounce_address.lower():
        return Route("bounce")
    return None


def process(
    engine: Engine, ctx: AppContext, raw: bytes, routes: list[Route], *, source: str
) -> list[Bounce]:
    """Read one mail that came to `routes` and record what it says, in one transaction."""
    with transaction(engine) as session:
        kept: list[Bounce] = []
        for where in routes:
            if where.kind == "unsubscribe":
                subscriber = subscriber_by_mail_token(session, ctx, where.token or "")
                finding = Finding(
                    BounceKind.unsubscribe if subscriber else BounceKind.unknown,
                    diagnostic="a mail to the List-Unsubscribe mailto: address",
                )
                whom = Whom(subscriber)
                kept.append(_keep(session, ctx, finding, whom, raw, source, None))
                continue
            report = read_report(raw)
            findings = report.findings or [_unreadable(where)]
            for index, finding in enumerate(findings):
                # By SMTP or IMAP, a retried report keeps its Message-ID.
                report_id = f"mail:{report.message_id}:{index}" if report.message_id else None
                whom = attribute(
                    session,
                    ctx,
                    delivery_token=where.token,
                    email=finding.email,
                    original=report.original,
                )
                kept.append(_keep(session, ctx, finding, whom, raw, source, report_id))
        return kept


def _unreadable(where: Route) -> Finding:
    """A mail no parser understood. At a VERP address it still names its delivery, and
    counts as a soft bounce (three of them suppress); elsewhere it is kept for a person."""
    if where.token:
        return Finding(BounceKind.soft, diagnostic="an unreadable report at the VERP address")
    return Finding(BounceKind.unknown, diagnostic="not a report we could read")


def _keep(
    session: SqlSession,
    ctx: AppContext,
    finding: Finding,
    whom: Whom,
    raw: bytes,
    source: str,
    report_id: str | None,
) -> Bounce:
    return record_bounce(
        session, ctx, finding, whom, source=source, raw_size=len(raw), raw=raw, report_id=report_id
    )


class _Handler:
    def __init__(self, engine: Engine, ctx: AppContext) -> None:
        self.engine, self.ctx = engine, ctx

    async def handle_RCPT(
        self,
        _server: SMTPServer,
        _session: Session,
        envelope: Envelope,
        address: str,
        _options: list[str],
    ) -> str:
        if route(self.ctx.settings, address) is None:
            return "550 5.1.1 No such mailbox here: this server takes only bounces"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: SMTPServer, _session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        routes = [r for a in envelope.rcpt_tos if (r := route(self.ctx.settings, a)) is not None]
        try:
            kept = await asyncio.to_thread(
                process, self.engine, self.ctx, raw, routes, source="smtp"
            )
        except SQLAlchemyError as exc:  # the sender keeps the mail and tries again later
            log.error("could not record a bounce (%s); asked the sender to retry", exc)
            return "451 4.3.0 Cannot record this now; please try again later"
        log.info("bounce receiver: %s", ", ".join(f"{b.kind} #{b.id}" for b in kept))
        return "250 OK: recorded"


class BounceReceiver:
    """aiosmtpd on BOUNCE_SMTP_HOST:BOUNCE_SMTP_PORT, in its own thread."""

    def __init__(self, engine: Engine, ctx: AppContext, *, port: int | None = None) -> None:
        settings = ctx.settings
        self.host = settings.bounce_smtp_host
        # 0: a free port, read from `port` once started (the tests' receivers)
        self.port = port if port is not None else settings.bounce_smtp_port or DEFAULT_PORT
        self._handler = _Handler(engine, ctx)
        self._server_hostname = settings.bounce_domain or settings.mail_domain
        self._controller: BoundController | None = None

    def start(self) -> None:
        """Listen; OSError at once when the port is taken."""
        controller = BoundController(
            self._handler,
            hostname=self.host,
            port=self.port,
            server_hostname=self._server_hostname,
            data_size_limit=MAX_REPORT_BYTES,
            ready_timeout=10,
        )
        controller.start()
        self._controller, self.port = controller, controller.port
        log.info("bounce receiver listening on %s:%s", self.host, self.port)

    def stop(self) -> None:
        """Stop listening."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

"""The daily column: refresh the sources, find today's column, start its send, deliver it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy.engine import Engine

from ..columns import sources
from ..config import Settings, SmtpTarget
from ..context import AppContext
from ..db import transaction
from . import sends
from .worker import SendWorker

log = logging.getLogger(__name__)


def refresh_columns(engine: Engine, settings: Settings) -> None:
    """Import new or edited columns from COLUMNS_DIR and FEED_URL; one log line per bad file."""
    results: list[sources.ImportOutcome] = []
    errors: list[sources.ColumnFileError] = []
    if settings.columns_dir.is_dir():
        with transaction(engine) as session:
            found, failed = sources.import_paths(session, [settings.columns_dir])
        results += found
        errors += failed
    if settings.feed_url:
        with transaction(engine) as session:
            found, failed = sources.poll_feed(session, settings.feed_url)
        results += found
        errors += failed
    for error in errors:
        log.warning("column not imported: %s", error)
    for outcome in results:
        if outcome.action in ("created", "updated"):
            log.info("column %s %s (%s)", outcome.slug, outcome.action, outcome.name)


def local_day(settings: Settings, now: dt.datetime) -> dt.date:
    return now.astimezone(settings.tz).date()


def send_moment(settings: Settings, day: dt.date) -> dt.datetime:
    """SEND_TIME on `day` in TIMEZONE, as an aware datetime (DST-correct via zoneinfo)."""
    return dt.datetime.combine(day, settings.send_time, tzinfo=settings.tz)


async def run_daily(
    engine: Engine, ctx: AppContext, target: SmtpTarget, day: dt.date
) -> sends.SendCounts | None:
    """Send `day`'s column to every active reader, once. Safe to call any number of times,
    from any number of processes: there is one send per column."""
    await asyncio.to_thread(refresh_columns, engine, ctx.settings)
    with transaction(engine) as session:
        column = sends.column_for(session, day)
        if column is None:
            log.info("no column for %s: nothing sent today", day.isoformat())
            return None
        send, created = sends.start(session, column=column)
        send_id, total, title = send.id or 0, send.total, column.title
    if created:
        log.info("send %s started: %r to %s readers", send_id, title, total)
    return await resume(engine, ctx, target, send_id)


async def resume(
    engine: Engine, ctx: AppContext, target: SmtpTarget, send_id: int
) -> sends.SendCounts:
    counts = await SendWorker(engine, ctx, target).run(send_id)
    log.info(
        "send %s: %s sent, %s failed, %s left", send_id, counts.sent, counts.failed, counts.pending
    )
    return counts


async def catch_up(engine: Engine, ctx: AppContext, target: SmtpTarget, now: dt.datetime) -> None:
    """At start-up: finish sends a crash interrupted, and make today's send if the service
    was down at SEND_TIME but it is still within SEND_GRACE."""
    with transaction(engine) as session:
        unfinished = [send.id or 0 for send in sends.unfinished(session)]
    for send_id in unfinished:
        log.info("resuming unfinished send %s", send_id)
        await resume(engine, ctx, target, send_id)
    settings = ctx.settings
    day = local_day(settings, now)
    moment = send_moment(settings, day)
    if moment <= now <= moment + settings.send_grace:
        log.info("catching up on the %s send missed at %s", day.isoformat(), moment.isoformat())
        await run_daily(engine, ctx, target, day)

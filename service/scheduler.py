"""APScheduler wiring only: when the daily send runs, not what it does."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import Engine

from .config import Settings, SmtpTarget
from .context import AppContext
from .delivery import daily

log = logging.getLogger(__name__)
JOB_ID = "daily-column"


def daily_trigger(settings: Settings) -> CronTrigger:
    """Every day at SEND_TIME in TIMEZONE; zoneinfo keeps it right across DST changes."""
    return CronTrigger(
        hour=settings.send_time.hour, minute=settings.send_time.minute, timezone=settings.tz
    )


Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def daily_job(
    engine: Engine, ctx: AppContext, target: SmtpTarget, clock: Clock = system_clock
) -> Callable[[], Awaitable[None]]:
    """The job the trigger fires; `clock` says what "today" is (tests pass their own)."""

    async def job() -> None:
        now = clock()
        try:
            await daily.run_daily(engine, ctx, target, daily.local_day(ctx.settings, now))
        except Exception:  # the scheduler must live to fire tomorrow; the send resumes then
            log.exception("daily send failed; unfinished deliveries resume at the next start")

    return job


def start_scheduler(
    engine: Engine, ctx: AppContext, target: SmtpTarget, clock: Clock = system_clock
) -> AsyncIOScheduler:
    """Schedule the daily send, and catch up at once on anything missed while down."""
    scheduler = AsyncIOScheduler(timezone=ctx.settings.tz)
    job = daily_job(engine, ctx, target, clock)
    scheduler.add_job(
        job,
        daily_trigger(ctx.settings),
        id=JOB_ID,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(ctx.settings.send_grace.total_seconds()),
    )

    async def startup() -> None:
        try:
            await daily.catch_up(engine, ctx, target, clock())
        except Exception:
            log.exception("catching up at start-up failed")

    scheduler.add_job(startup, id="catch-up", next_run_time=dt.datetime.now(dt.UTC))
    scheduler.start()
    next_run = daily_trigger(ctx.settings).get_next_fire_time(
        None, dt.datetime.now(ctx.settings.tz)
    )
    log.info(
        "daily column scheduled at %s %s; next send %s",
        ctx.settings.send_time.strftime("%H:%M"),
        ctx.settings.timezone,
        next_run,
    )
    return scheduler

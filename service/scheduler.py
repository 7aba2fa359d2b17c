"""APScheduler wiring only: when the daily send runs and when unfinished sends are resumed,
not what either does."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .clock import now
from .config import Settings
from .delivery import daily, timing
from .delivery.daily import ColumnNotSendable, Dispatcher
from .delivery.sends import SendCancelled, SendPaused

log = logging.getLogger(__name__)
JOB_ID = "daily-column"
HEAL_JOB_ID = "resume-unfinished"


def daily_trigger(settings: Settings) -> CronTrigger:
    """Every day at SEND_TIME in the earliest time zone (DELIVERY_TIMING=local: the send
    starts there and each reader's row falls due at SEND_TIME where they are) or in TIMEZONE
    (fixed); zoneinfo keeps it right across DST changes."""
    zone = timing.EARLIEST if timing.is_local(settings) else settings.tz
    return CronTrigger(
        hour=settings.send_time.hour, minute=settings.send_time.minute, timezone=zone
    )


Clock = Callable[[], dt.datetime]


def daily_job(dispatcher: Dispatcher, clock: Clock = now) -> Callable[[], Awaitable[None]]:
    """The job the trigger fires; `clock` says what "today" is (tests pass their own)."""

    async def job() -> None:
        now = clock()
        try:
            await dispatcher.run_daily(daily.local_day(dispatcher.ctx.settings, now))
        except SendPaused as paused:
            log.warning("daily send waits for the operator: %s", paused)
        except SendCancelled as cancelled:
            log.warning("daily send: %s", cancelled)
        except ColumnNotSendable as exc:
            log.error("daily send not started: %s", exc)
        except Exception:  # the scheduler must live on; the heal job retries within the grace
            log.exception("daily send failed; the next heal resumes it")

    return job


def heal_job(dispatcher: Dispatcher, clock: Clock = now) -> Callable[[], Awaitable[None]]:
    """The job that resumes unfinished sends every RESUME_INTERVAL."""

    async def job() -> None:
        try:
            await dispatcher.heal(clock())
        except Exception:  # the database is down, say: try again at the next interval
            log.exception("looking for unfinished sends failed; trying again later")

    return job


def start_scheduler(dispatcher: Dispatcher, clock: Clock = now) -> AsyncIOScheduler:
    """Schedule the daily send and the periodic heal, and catch up at once on anything
    missed while down."""
    settings = dispatcher.ctx.settings
    scheduler = AsyncIOScheduler(timezone=settings.tz)
    scheduler.add_job(
        daily_job(dispatcher, clock),
        daily_trigger(settings),
        id=JOB_ID,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(settings.send_grace.total_seconds()),
    )
    scheduler.add_job(
        heal_job(dispatcher, clock),
        IntervalTrigger(seconds=settings.resume_interval.total_seconds()),
        id=HEAL_JOB_ID,
        max_instances=1,
        coalesce=True,
    )

    async def startup() -> None:
        try:
            await dispatcher.catch_up(clock())
        except Exception:
            log.exception("catching up at start-up failed; the heal job tries again")

    scheduler.add_job(startup, id="catch-up", next_run_time=now())
    scheduler.start()
    next_run = daily_trigger(settings).get_next_fire_time(None, now().astimezone(settings.tz))
    log.info(
        "daily column scheduled at %s %s; next send starts %s",
        settings.send_time.strftime("%H:%M"),
        "in each reader's time zone" if timing.is_local(settings) else settings.timezone,
        next_run,
    )
    return scheduler

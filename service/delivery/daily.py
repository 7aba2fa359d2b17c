"""The daily column: refresh the sources, find today's column, start its send, deliver it,
and keep every unfinished send going in this process until it is done."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable

from sqlalchemy.engine import Engine

from ..columns import sources, store
from ..columns.mail import ColumnTooLarge, prepare_column
from ..columns.view import column_view
from ..config import Settings, SmtpTarget
from ..context import AppContext
from ..db import transaction
from ..models import ColumnRecord, Send
from ..retry import worker_name
from . import sends
from .worker import SendWorker

log = logging.getLogger(__name__)


def refresh_columns(engine: Engine, settings: Settings) -> None:
    """Import new or edited columns from COLUMNS_DIR and FEED_URL, in one transaction."""
    with transaction(engine) as session:
        sources.refresh(session, settings)


def local_day(settings: Settings, now: dt.datetime) -> dt.date:
    return now.astimezone(settings.tz).date()


def send_moment(settings: Settings, day: dt.date) -> dt.datetime:
    """SEND_TIME on `day` in TIMEZONE, as an aware datetime (DST-correct via zoneinfo)."""
    return dt.datetime.combine(day, settings.send_time, tzinfo=settings.tz)


def within_grace(settings: Settings, day: dt.date, now: dt.datetime) -> bool:
    moment = send_moment(settings, day)
    return moment <= now <= moment + settings.send_grace


class ColumnNotSendable(ValueError):
    """The column cannot be mailed as it is (too large); no send was created for it."""


def start_send(engine: Engine, settings: Settings, column: ColumnRecord) -> tuple[Send, bool]:
    """The send of `column`, created (and its readers snapshotted) if it did not exist. A new
    send is only created for a column that can be mailed: checked here, before the snapshot,
    so that a column too large for a mail never locks a send that can only fail."""
    with transaction(engine) as session:
        existing = sends.for_column(session, column.id or 0)
    if existing is None:
        try:
            prepare_column(column_view(column), settings)
        except ColumnTooLarge as exc:
            raise ColumnNotSendable(
                f"the column of {column.date} is too large to mail: {exc}; shorten it"
            ) from exc
        except ValueError as exc:
            raise ColumnNotSendable(f"the column of {column.date} cannot be sent: {exc}") from exc
    with transaction(engine) as session:
        return sends.start(session, column=column)


class Dispatcher:
    """This process's sends: runs at most one SendWorker per send, resumes the unfinished ones
    (the periodic heal), and stops them all gracefully. One worker name per process, so that a
    run aborted by a database error can take back its own rows at once instead of waiting for
    their lease to expire."""

    def __init__(self, engine: Engine, ctx: AppContext, target: SmtpTarget) -> None:
        self.engine = engine
        self.ctx = ctx
        self.target = target
        self.name = worker_name()
        # send id -> its worker and the task running it (the scheduler's, or one of ours)
        self._running: dict[int, tuple[SendWorker, asyncio.Task[object] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_day: dt.date | None = None  # a daily run that failed before it finished

    async def run_daily(self, day: dt.date) -> sends.SendCounts | None:
        """Send `day`'s column to every active reader, once. Safe to call any number of
        times, from any number of processes: there is one send per column."""
        try:
            counts = await self._run_daily(day)
        except (sends.SendPaused, ColumnNotSendable):
            raise  # waits for the operator, not for the heal
        except Exception:
            self._retry_day = day
            raise
        if self._retry_day == day:
            self._retry_day = None
        return counts

    async def _run_daily(self, day: dt.date) -> sends.SendCounts | None:
        settings = self.ctx.settings
        await asyncio.to_thread(refresh_columns, self.engine, settings)
        column = await asyncio.to_thread(self._column, day)
        if column is None:
            log.info("no column for %s: nothing sent today", day.isoformat())
            return None
        send, created = await asyncio.to_thread(start_send, self.engine, settings, column)
        if created:
            log.info("send %s started: %r to %s readers", send.id, column.title, send.total)
        return await self.resume(send.id or 0)

    def _column(self, day: dt.date) -> ColumnRecord | None:
        with transaction(self.engine) as session:
            return store.column_for(session, day)

    async def resume(self, send_id: int) -> sends.SendCounts | None:
        """Deliver what this process can of a send; None if it is already running here."""
        if send_id in self._running:
            return None
        worker = SendWorker(self.engine, self.ctx, self.target, name=self.name)
        self._running[send_id] = (worker, asyncio.current_task())
        try:
            counts = await worker.run(send_id)
        finally:
            del self._running[send_id]
        log.info(
            "send %s: %s sent, %s failed, %s skipped, %s left",
            send_id,
            counts.sent,
            counts.failed,
            counts.skipped,
            counts.pending,
        )
        return counts

    async def heal(self, now: dt.datetime) -> None:
        """Resume every unfinished, unpaused send that is not running here, and retry a daily
        run that failed (the database or the relay was down) while its grace lasts. Each in
        its own task, so one send's trouble never holds up another's."""
        unfinished = await asyncio.to_thread(self._unfinished)
        for send_id in unfinished:
            if send_id not in self._running:
                log.info("resuming unfinished send %s", send_id)
                self._spawn(self.resume(send_id), f"send {send_id}")
        day = self._retry_day
        if day is not None and within_grace(self.ctx.settings, day, now):
            self._retry_day = None
            self._spawn(self.run_daily(day), f"the daily send of {day}")

    def _unfinished(self) -> list[int]:
        with transaction(self.engine) as session:
            return [send.id or 0 for send in sends.unfinished(session)]

    async def catch_up(self, now: dt.datetime) -> None:
        """At start-up: heal, and make today's send if the service was down at SEND_TIME but
        it is still within SEND_GRACE."""
        await self.heal(now)
        settings = self.ctx.settings
        day = local_day(settings, now)
        if within_grace(settings, day, now):
            moment = send_moment(settings, day)
            log.info("catching up on the %s send due at %s", day.isoformat(), moment.isoformat())
            self._spawn(self.run_daily(day), f"the daily send of {day}")

    def _spawn(self, work: Awaitable[object], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except sends.SendPaused as paused:
                log.warning("%s is paused: %s", what, paused.reason)
            except ColumnNotSendable as exc:
                log.error("%s: %s", what, exc)
            except Exception:  # logged with its trace; the next heal tries again
                log.exception("%s failed; the next heal (RESUME_INTERVAL) resumes it", what)

        task = asyncio.create_task(guarded(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Every running send finishes its hand-offs in progress and gives back the rest."""
        for worker, _task in self._running.values():
            worker.stop()

    async def wait(self, grace: float | None) -> None:
        """Wait for the runs to end (after stop(), say); cancel what is left after `grace`
        seconds (its rows stay claimed until their lease expires, as after a crash)."""
        tasks = {task for _worker, task in self._running.values() if task is not None}
        tasks |= self._tasks
        tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

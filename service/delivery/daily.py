"""The daily column: refresh the sources, find a day's column, start its send, deliver it,
and keep every unfinished send going in this process until it is done. The one send
orchestration: the scheduler, `broadside send` and `broadside preview` all go through here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Engine

from ..clock import utcnow
from ..columns import sources, store
from ..columns.digest import prepare_digest
from ..columns.mail import ColumnTooLarge, prepare_column
from ..columns.view import column_view
from ..config import (
    LATE_COLUMN_POLL,
    RATE_BUCKET_SWEEP_SECONDS,
    SEND_POLL_SECONDS,
    SHUTDOWN_GRACE,
    Settings,
)
from ..db import transaction
from ..mail.smtp import SmtpConnection, SmtpFailure
from ..models import ColumnRecord, Send, SendKind
from ..retry import worker_name
from ..tokens import Purpose
from . import digests, ratelimit, sends, timing, watch
from .building import Job, job_for, message_for
from .courier import Courier
from .worker import SendWorker

log = logging.getLogger(__name__)


def refresh_columns(engine: Engine, settings: Settings) -> None:
    """Import new or edited columns from COLUMNS_DIR and FEED_URL, in one transaction."""
    with transaction(engine) as session:
        sources.refresh(session, settings)


def column_of(engine: Engine, day: dt.date) -> ColumnRecord | None:
    """The stored column of `day`, if there is one."""
    with transaction(engine) as session:
        return store.column_for(session, day)


def local_day(settings: Settings, now: dt.datetime) -> dt.date:
    """The day whose send starts at `now`'s SEND_TIME: the date in the earliest time zone
    (DELIVERY_TIMING=local) or in TIMEZONE (fixed)."""
    return timing.day_at(settings, now)


def current_week(settings: Settings, now: dt.datetime) -> str:
    """The ISO week of `now`'s day (local_day), as a digest send names it: the week a digest
    preview shows when none is named."""
    return timing.week_of(local_day(settings, now))


def send_moment(settings: Settings, day: dt.date) -> dt.datetime:
    """When the send of `day` starts, as an aware datetime (DST-correct via zoneinfo)."""
    return timing.opens(settings, day)


def within_grace(settings: Settings, day: dt.date, now: dt.datetime) -> bool:
    """Whether `day`'s send should exist at `now`: started, and its last reader's due moment
    not more than SEND_GRACE ago."""
    return day in timing.open_days(settings, now)


class ColumnNotSendable(ValueError):
    """The column cannot be mailed as it is (too large); no send was created for it."""


def start_send(
    engine: Engine,
    settings: Settings,
    column: ColumnRecord,
    *,
    timed: bool = True,
    now: dt.datetime | None = None,
) -> tuple[Send, bool]:
    """The send of `column`, created (and its readers snapshotted) if it did not exist: each
    reader due at SEND_TIME on the column's date where they are (DELIVERY_TIMING=local and
    `timed`), or all at once. A new send is only created for a column that can be mailed:
    checked here, before the snapshot, so that a column too large for a mail never locks a
    send that can only fail."""
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
    local = timed and timing.is_local(settings)
    due_for = timing.daily_due(settings, column.date) if local else None
    with transaction(engine) as session:
        return sends.start(session, column=column, due_for=due_for, now=now)


class ColumnCancelled(ColumnNotSendable):
    """The operator cancelled the column; it is not sent until its schedule is set again."""


def start_now(engine: Engine, settings: Settings, column_id: int) -> tuple[Send, bool]:
    """The operator's "send now": start the column's send at once (its readers snapshotted
    now); the running `serve`/`worker` processes deliver it, picking it up within
    RESUME_INTERVAL. LookupError for an unknown column, ColumnCancelled for a cancelled one,
    ColumnNotSendable for one too large to mail; an existing send is returned as it is."""
    with transaction(engine) as session:
        column = store.column_by_id(session, column_id)
    if column is None:
        raise LookupError(f"no column {column_id}")
    if column.cancelled_at is not None:
        raise ColumnCancelled(
            f"the column of {column.date} is cancelled: set its schedule again first"
        )
    return start_send(engine, settings, column, timed=False)


SENDING = ""  # a day's column state (Dispatcher._column_state): nothing to start


class Dispatcher:
    """This process's sends: runs at most one SendWorker per send, joins a send another process
    started within seconds (watch_sends), resumes the unfinished ones (the periodic heal), and
    stops them all gracefully. One worker name per process, so that a run aborted by a
    database error can take back its own rows at once instead of waiting for their lease to
    expire."""

    def __init__(self, courier: Courier) -> None:
        self.courier = courier
        self.engine = courier.engine
        self.ctx = courier.ctx
        self.name = worker_name()
        # send id -> its worker and the task running it (the scheduler's, or one of ours)
        self._running: dict[int, tuple[SendWorker, asyncio.Task[object] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_day: dt.date | None = None  # a daily run that failed before it finished
        # Sends waiting for their next row to fall due (a reader's local morning): the timer
        # that resumes each then, and the moment it is set for.
        self._wakes: dict[int, tuple[dt.datetime, asyncio.TimerHandle]] = {}
        # Late columns: when the sources were last refreshed for one, and the (day, column
        # version) pairs already tried, so that a column that cannot be sent is not retried
        # (and logged) at every heal.
        self._refreshed = -math.inf
        self._tried: set[tuple[dt.date, str]] = set()
        self._watch = watch.SendWatch()  # the sends going out at the last look
        self._stopped = False
        self._stopping: asyncio.Event | None = None  # wakes watch_sends() at stop()
        self._swept = -math.inf  # when idle rate buckets were last deleted (monotonic)

    async def run_daily(self, day: dt.date) -> sends.SendCounts | None:
        """Send `day`'s column to every active reader, once. Safe to call any number of
        times, from any number of processes: there is one send per column."""
        try:
            counts = await self._run_daily(day)
        except (sends.SendPaused, sends.SendCancelled, ColumnNotSendable):
            raise  # waits for the operator, not for the heal
        except Exception:
            self._retry_day = day
            raise
        if self._retry_day == day:
            self._retry_day = None
        return counts

    async def _run_daily(self, day: dt.date) -> sends.SendCounts | None:
        settings = self.ctx.settings
        await self.start_digests(self.courier.clock())
        await asyncio.to_thread(refresh_columns, self.engine, settings)
        column = await asyncio.to_thread(self._column, day)
        if column is None:
            log.info("no column for %s: nothing sent today", day.isoformat())
            return None
        if column.cancelled_at is not None or column.send_at is not None:
            log.info(
                "the column of %s is %s by the operator: not sent at SEND_TIME",
                day.isoformat(),
                "cancelled"
                if column.cancelled_at is not None
                else f"scheduled for {column.send_at}",
            )
            return None
        return await self.send_column(column)

    async def send_column(
        self, column: ColumnRecord, *, timed: bool = True
    ) -> sends.SendCounts | None:
        """Start (or find) the send of `column` and deliver it here: each reader at their
        SEND_TIME (`timed`), or everyone at once (an operator's schedule)."""
        settings = self.ctx.settings
        send, created = await asyncio.to_thread(
            functools.partial(
                start_send, self.engine, settings, column, timed=timed, now=self.courier.utcnow()
            )
        )
        if created:
            log.info("send %s started: %r to %s readers", send.id, column.title, send.total)
        return await self.resume(send.id or 0)

    def _column(self, day: dt.date) -> ColumnRecord | None:
        return column_of(self.engine, day)

    async def resume(self, send_id: int) -> sends.SendCounts | None:
        """Deliver what this process can of a send; None if it is already running here."""
        if send_id in self._running:
            return None
        worker = SendWorker(self.courier, name=self.name)
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
        if worker.next_due is not None:
            self._wake_at(send_id, worker.next_due)
        return counts

    def _wake_at(self, send_id: int, due: dt.datetime) -> None:
        """Resume `send_id` when its next row falls due (naive UTC), not before: the process
        sleeps through the night instead of looking every minute."""
        earlier = self._wakes.get(send_id)
        if earlier is not None and earlier[0] <= due and not earlier[1].cancelled():
            return
        if earlier is not None:
            earlier[1].cancel()
        delay = max(0.0, (due - self.courier.utcnow()).total_seconds())
        log.info("send %s waits until %s UTC for its next readers", send_id, due.isoformat())

        def wake() -> None:
            self._wakes.pop(send_id, None)
            if send_id not in self._running:
                self._spawn(self.resume(send_id), f"send {send_id}")

        handle = asyncio.get_running_loop().call_later(delay, wake)
        self._wakes[send_id] = (due, handle)

    async def heal(self, now: dt.datetime) -> None:
        """Resume every unfinished, unpaused send that has rows due and is not running here
        (and set a wake-up for those whose rows fall due later), retry a daily run that
        failed (the database or the relay was down) while its grace lasts, start the send of
        a column that arrived late, and (at most hourly) delete the rate buckets idle long
        enough to be full again. Each send in its own task, so one send's trouble never holds
        up another's."""
        unfinished = await asyncio.to_thread(self._unfinished, now)
        for send_id, due in unfinished:
            self._take_up(send_id, due, "resuming unfinished send %s")
        day = self._retry_day
        if day is not None and within_grace(self.ctx.settings, day, now):
            self._retry_day = None
            self._spawn(self.run_daily(day), f"the daily send of {day}")
        for column in await asyncio.to_thread(self._scheduled, now):
            log.info("the column of %s is due (scheduled for %s)", column.date, column.send_at)
            self._spawn(
                self.send_column(column, timed=False), f"the scheduled send of {column.date}"
            )
        for day in await asyncio.to_thread(self._late_days, now):
            log.info("the column of %s has no send yet: starting it", day.isoformat())
            self._spawn(self.run_daily(day), f"the daily send of {day}")
        await self.start_digests(now)
        await asyncio.to_thread(self._forget_idle_buckets, now)

    def _take_up(self, send_id: int, due: dt.datetime | None, why: str) -> None:
        """Deliver `send_id` here: now (logging `why`), or when its next row falls due at
        `due`; nothing when it already runs here."""
        if send_id in self._running:
            return
        if due is not None:
            self._wake_at(send_id, due)
            return
        log.info(why, send_id)
        self._spawn(self.resume(send_id), f"send {send_id}")

    async def watch_sends(self) -> None:
        """Until stop(): every SEND_POLL_SECONDS, join each send that started or was resumed
        since the last look, whoever did it (the scheduler of another process, an operator's
        "send now" or resume, `broadside send`), instead of waiting for the next heal
        (RESUME_INTERVAL). A look is one small indexed query; it claims nothing itself, so the
        ledger's claims stay what keeps every reader to one copy. A database that does not
        answer is logged once, not at every look."""
        self._stopping = asyncio.Event()
        failing = False
        while not self._stopped:
            try:
                await self.notice(self.courier.clock())
            except Exception:  # the database is down, say: the next look tries again
                self._watch = watch.SendWatch()  # and takes up all it sees, missing none
                if not failing:
                    log.warning("looking for new sends failed; trying again", exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("looking for new sends works again")
                failing = False
            # asyncio.timeout rather than wait_for: on 3.11 wait_for can swallow a cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_POLL_SECONDS):
                    await self._stopping.wait()

    async def notice(self, now: dt.datetime) -> list[int]:
        """One look of watch_sends: join the sends going out now that were not at the last
        look (all of them at the first); their ids."""
        news = self._watch.news(await asyncio.to_thread(self._going_out))
        moment = now.astimezone(dt.UTC).replace(tzinfo=None)
        for send_id in news:
            if send_id not in self._running:
                due = await asyncio.to_thread(self._waiting_until, send_id, moment)
                self._take_up(send_id, due, "send %s is going out: joining it")
        return news

    def _going_out(self) -> watch.GoingOut:
        with transaction(self.engine) as session:
            return watch.going_out(session)

    def _waiting_until(self, send_id: int, moment: dt.datetime) -> dt.datetime | None:
        with transaction(self.engine) as session:
            return sends.waiting_until(session, send_id, moment)

    def _forget_idle_buckets(self, now: dt.datetime) -> None:
        """At most every RATE_BUCKET_SWEEP_SECONDS: delete the rate buckets idle long enough
        to be full again (a finished send's DELIVERY_RATE, a relay's cap unused for a day,
        a reader's count), which would otherwise stay forever."""
        if time.monotonic() - self._swept < RATE_BUCKET_SWEEP_SECONDS:
            return
        self._swept = time.monotonic()
        moment = now.astimezone(dt.UTC).replace(tzinfo=None)
        with transaction(self.engine) as session:
            forgotten = ratelimit.forget_idle_buckets(
                session, delivery_rate=self.ctx.settings.delivery_rate, now=moment
            )
        if forgotten:
            log.info("deleted %s idle rate buckets", forgotten)

    async def start_digests(self, now: dt.datetime) -> None:
        """Start the weekly digest send of each open week that has weekly readers and none
        yet, and deliver what is due of it here."""
        for send_id in await asyncio.to_thread(self._new_digests, now):
            self._spawn(self.resume(send_id), f"send {send_id}")

    def _new_digests(self, now: dt.datetime) -> list[int]:
        started = []
        moment = now.astimezone(dt.UTC).replace(tzinfo=None)
        for week in timing.open_weeks(self.ctx.settings, now):
            with transaction(self.engine) as session:
                made = digests.start_week(session, self.ctx.settings, week, moment)
            if made is not None and made[1]:
                log.info(
                    "send %s started: the digest of %s to %s readers",
                    made[0].id,
                    week,
                    made[0].total,
                )
                started.append(made[0].id or 0)
        return started

    def _late_days(self, now: dt.datetime) -> list[dt.date]:
        """Open days whose column is there but whose send is not (the column arrived after
        its send time, or the process was down then): each column version once. When a day
        has no column yet, the sources are refreshed at most every LATE_COLUMN_POLL, not at
        every heal (FEED_URL is somebody else's server)."""
        open_days = timing.open_days(self.ctx.settings, now)
        states = {day: self._column_state(day) for day in open_days}
        if None in states.values() and time.monotonic() - self._refreshed >= LATE_COLUMN_POLL:
            self._refreshed = time.monotonic()
            try:
                refresh_columns(self.engine, self.ctx.settings)
            except Exception:  # a feed that is down: the next poll tries again
                log.warning("refreshing the columns for a late column failed", exc_info=True)
            states = {day: self._column_state(day) for day in open_days}
        late = []
        for day, state in states.items():
            if state and state != SENDING and (day, state) not in self._tried:
                self._tried.add((day, state))
                late.append(day)
        return late

    def _column_state(self, day: dt.date) -> str | None:
        """None: `day` has no column; SENDING: it has its send, or waits for the operator
        (cancelled, scheduled); else the column's content hash: it should have a send."""
        with transaction(self.engine) as session:
            column = store.column_for(session, day)
            if column is None:
                return None
            if column.cancelled_at is not None or column.send_at is not None:
                return SENDING
            if sends.for_column(session, column.id or 0) is not None:
                return SENDING
            return column.content_hash

    def _scheduled(self, now: dt.datetime) -> list[ColumnRecord]:
        with transaction(self.engine) as session:
            return store.scheduled_due(session, now.astimezone(dt.UTC).replace(tzinfo=None))

    def _unfinished(self, now: dt.datetime) -> list[tuple[int, dt.datetime | None]]:
        """Unfinished sends, each with when its next row falls due, or None: now."""
        moment = now.astimezone(dt.UTC).replace(tzinfo=None)
        with transaction(self.engine) as session:
            return [
                (send.id or 0, sends.waiting_until(session, send.id or 0, moment))
                for send in sends.unfinished(session)
            ]

    async def catch_up(self, now: dt.datetime) -> None:
        """At start-up: heal, which also makes the send of an open day that has none (the
        service was down at SEND_TIME but the day's grace lasts)."""
        await self.heal(now)

    def _spawn(self, work: Awaitable[object], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except sends.SendPaused as paused:
                log.warning("%s is paused: %s", what, paused.reason)
            except sends.SendCancelled:
                log.warning("%s was cancelled by the operator", what)
            except ColumnNotSendable as exc:
                log.error("%s: %s", what, exc)
            except Exception:  # logged with its trace; the next heal tries again
                log.exception("%s failed; the next heal (RESUME_INTERVAL) resumes it", what)

        task = asyncio.create_task(guarded(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Every running send finishes its hand-offs in progress and gives back the rest;
        watch_sends() returns."""
        self._stopped = True
        if self._stopping is not None:
            self._stopping.set()
        for worker, _task in self._running.values():
            worker.stop()
        for _due, handle in self._wakes.values():
            handle.cancel()
        self._wakes.clear()

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


@dataclass(frozen=True)
class Plan:
    """What a send of one day would do, for an operator to read before it starts."""

    day: dt.date
    title: str | None  # None: no column for that day
    slug: str | None
    readers: int  # active readers now, whom a new send would snapshot
    send_id: int | None  # the existing send, if any
    send_status: str | None
    send_readers: int | None
    pause_reason: str | None


def plan(engine: Engine, settings: Settings, day: dt.date) -> Plan:
    """Refresh the columns, then say what a send of `day` would do."""
    refresh_columns(engine, settings)
    with transaction(engine) as session:
        column = store.column_for(session, day)
        existing = sends.for_column(session, column.id or 0) if column is not None else None
        readers = sends.active_readers(session)
    return Plan(
        day=day,
        title=column.title if column else None,
        slug=column.slug if column else None,
        readers=readers,
        send_id=existing.id if existing else None,
        send_status=existing.status if existing else None,
        send_readers=existing.total if existing else None,
        pause_reason=existing.pause_reason if existing else None,
    )


@dataclass(frozen=True)
class Started:
    """A send just started or resumed by `SendRun.start`."""

    send_id: int
    title: str
    created: bool  # False: an existing send resumed
    unpaused: str | None  # the reason it had been paused, when this start un-paused it


@dataclass(frozen=True)
class SendOutcome:
    """How a foreground send ended: done, paused (with why) or stopped."""

    send_id: int
    counts: sends.SendCounts
    paused: str | None = None  # the relay's reason, when the send paused
    stopped: bool = False  # stop() ended it before the end
    cancelled: bool = False  # the operator cancelled it
    # Rows left that fall due later (readers' local SEND_TIME): when the first does.
    waiting_until: dt.datetime | None = None


# The progress bar's counting may take at most 1/this of the time between two looks.
PROGRESS_COST_FACTOR = 20


class SendRun:
    """An operator's send of one day, in the foreground: un-pause it if paused, start or
    resume it, deliver it here while reporting progress, and stop it gracefully on request
    (the hand-offs in progress finish and are recorded; what still runs after SHUTDOWN_GRACE
    seconds is cancelled, its rows left to their leases as after a crash)."""

    def __init__(self, courier: Courier, day: dt.date) -> None:
        self.courier = courier
        self.day = day
        self._dispatcher = Dispatcher(courier)
        self._task: asyncio.Task[sends.SendCounts | None] | None = None
        self._stopped = False
        self._send_id = 0

    async def start(self) -> Started:
        """Create or resume the day's send (ColumnNotSendable, or LookupError: no column)."""
        engine, settings = self.courier.engine, self.courier.settings
        column = await asyncio.to_thread(column_of, engine, self.day)
        if column is None:
            raise LookupError(self.day)
        if column.cancelled_at is not None:
            raise ColumnNotSendable(
                f"the column of {self.day} was cancelled by the operator; "
                "clear that in the dashboard or with PATCH /api/v1/admin/columns/{id} first"
            )
        unpaused = await asyncio.to_thread(_unpause, engine, column)
        send, created = await asyncio.to_thread(start_send, engine, settings, column)
        self._send_id = send.id or 0
        return Started(self._send_id, column.title, created, unpaused)

    async def deliver(
        self, progress: Callable[[sends.SendCounts], None], every: float = 0.5
    ) -> SendOutcome:
        """Deliver until the send is done, paused or stopped; `progress` hears the counts
        every `every` seconds and once at the end."""
        task = asyncio.create_task(self._dispatcher.resume(self._send_id))
        self._task = task
        while not task.done():
            started = time.monotonic()
            progress(await asyncio.to_thread(self._counts))
            # Counting scans the send's rows: at a million readers it takes a while, so
            # look less often rather than let the progress bar slow the send it shows.
            spent = time.monotonic() - started
            await asyncio.wait([task], timeout=max(every, PROGRESS_COST_FACTOR * spent))
        counts = await asyncio.to_thread(self._counts)
        progress(counts)
        try:
            await task
        except sends.SendPaused as paused:
            return SendOutcome(self._send_id, counts, paused=paused.reason)
        except sends.SendCancelled:
            return SendOutcome(self._send_id, counts, cancelled=True)
        except asyncio.CancelledError:
            if not self._stopped:
                raise
        waiting = None
        if counts.pending and not self._stopped:
            waiting = await asyncio.to_thread(self._waiting_until)
        return SendOutcome(self._send_id, counts, stopped=self._stopped, waiting_until=waiting)

    def _waiting_until(self) -> dt.datetime | None:
        with transaction(self.courier.engine) as session:
            return sends.waiting_until(session, self._send_id, self.courier.utcnow())

    def stop(self) -> None:
        """Stop gracefully; a second call cancels at once."""
        if self._task is None:
            return
        if self._stopped:
            self._task.cancel()
            return
        self._stopped = True
        self._dispatcher.stop()
        asyncio.get_running_loop().call_later(SHUTDOWN_GRACE, self._task.cancel)

    def _counts(self) -> sends.SendCounts:
        with transaction(self.courier.engine) as session:
            return sends.counts(session, self._send_id)


def _unpause(engine: Engine, column: ColumnRecord) -> str | None:
    """Resume a paused send of `column` (the operator's explicit act); the old reason."""
    with transaction(engine) as session:
        send = sends.for_column(session, column.id or 0)
        if send is None or send.status != "paused":
            return None
        reason = send.pause_reason or "paused"
        sends.resume(session, send.id or 0)
        return reason


async def preview(courier: Courier, day: dt.date, address: str) -> str | None:
    """Mail one copy of `day`'s column to `address`, built exactly as a reader's (with the
    address's own unsubscribe link when it is a reader); None when the relay took it, else
    its reason. No send is made and no reader changes."""
    column = await asyncio.to_thread(column_of, courier.engine, day)
    if column is None:
        raise LookupError(day)
    return await send_test_copy(courier, column, address)


async def send_test_copy(courier: Courier, column: ColumnRecord, address: str) -> str | None:
    """Mail one copy of `column` to `address` as a reader would get it; None when the relay
    took it, else its reason. No send is made and no reader changes."""
    return await _mail_test_copy(courier, address, functools.partial(reader_copy, courier, column))


async def send_digest_test_copy(
    courier: Courier, week: str, columns: Sequence[ColumnRecord], address: str
) -> str | None:
    """Mail one copy of the digest of `columns` (`week`'s, digests.preview_columns) to
    `address` as a weekly reader would get it; None when the relay took it, else its reason.
    No send is made and no reader changes."""
    build = functools.partial(digest_copy, courier, week, columns)
    return await _mail_test_copy(courier, address, build)


class ReaderCopy(Protocol):
    """Builds one reader's copy of a mail (reader_copy, digest_copy with their mail bound)."""

    def __call__(self, *, to: str, name: str, subscriber_id: int) -> bytes: ...


async def _mail_test_copy(courier: Courier, address: str, build: ReaderCopy) -> str | None:
    """Hand the relay one copy built for `address`: with that reader's own links when the
    address is a reader's (so the test copy's links can be tried), a sample's otherwise."""
    reader = await asyncio.to_thread(_reader, courier.engine, address)
    subscriber_id, name = reader if reader is not None else (0, "")
    data = await asyncio.to_thread(build, to=address, name=name, subscriber_id=subscriber_id)
    async with SmtpConnection(courier.target) as conn:
        try:
            await conn.send(courier.settings.bounce_address, address, data)
        except SmtpFailure as failure:
            return failure.reason
    return None


def reader_copy(
    courier: Courier, column: ColumnRecord, *, to: str, name: str, subscriber_id: int
) -> bytes:
    """The exact bytes a reader would get of `column` (rendered once here, for one reader):
    what a preview shows and a test copy sends."""
    job = job_for(
        courier,
        column,
        send_id=0,
        message_domain=f"{column.date.isoformat()}.preview-{secrets.token_hex(4)}",
        deadline=utcnow(),
    )
    return message_for(job, courier.ctx, subscriber_id=subscriber_id, email=to, name=name)


def digest_columns(engine: Engine, week: str) -> list[ColumnRecord]:
    """The columns of `week`'s digest preview (digests.preview_columns; NoDigest if none)."""
    with transaction(engine) as session:
        return digests.preview_columns(session, week=week)


def digest_copy(
    courier: Courier,
    week: str,
    columns: Sequence[ColumnRecord],
    *,
    to: str,
    name: str,
    subscriber_id: int,
) -> bytes:
    """The exact bytes a weekly reader would get of the digest of `columns` in `week`
    (rendered once here, for one reader): what the digest preview shows and its test copy
    sends. The worker's own message builder, given the digest as its prepared mail."""
    job = Job(
        send_id=0,
        prepared=prepare_digest([column_view(column) for column in columns], courier.settings),
        message_domain=f"{week}.preview-{secrets.token_hex(4)}",
        token_expiry=courier.ctx.tokens.expiry(Purpose.unsubscribe),
        deadline=utcnow(),
        kind=SendKind.digest,
    )
    return message_for(job, courier.ctx, subscriber_id=subscriber_id, email=to, name=name)


def _reader(engine: Engine, address: str) -> tuple[int, str] | None:
    with transaction(engine) as session:
        return sends.reader_by_address(session, address)

"""Deliver one send: claim batches, hand each message to SMTP over K reused connections,
and record every outcome durably before the connection takes its next message.

Crash safety (design rule 2): a row is committed as `sending` (claimed, with a lease)
before its hand-off and as `sent` after it; each connection waits for that second commit
before it starts another message. So when the process is killed at any instant, at most
K messages (one per connection) were accepted by the relay but not yet recorded; those
rows' leases expire and they are sent again. Every other row is either recorded as sent
or was never handed over. The commits are grouped: whatever the K connections finish
while one commit runs goes into the next, so the ledger costs one transaction per group,
not per message. A worker that cannot renew its leases stops at once (another worker may
take its rows over), and every outcome it writes is conditional on still owning the row.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import math
import threading
from collections.abc import Callable

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from ..db import in_thread, transaction
from ..mail.smtp import Fault, RelayHealth, SmtpConnection, SmtpFailure, Unended
from ..models import ColumnRecord, Send, SendKind, SendStatus
from ..retry import next_attempt, worker_name
from ..tokens import Purpose
from . import digests, ledger, sends
from .building import (
    BUILD_CHUNK,
    PROCESS_MIN_ROWS,
    Builders,
    Job,
    Ready,
    builders_for,
    job_for,
)
from .courier import Courier
from .digests import DigestMails
from .ledger import Claim, Outcomes, Refused
from .ratelimit import SharedRate, delivery_rate
from .relays import RelayLink, relays_for

log = logging.getLogger(__name__)
IDLE_POLL = 1.0  # seconds between looks when the rest of the send is deferred or elsewhere
# A run waits this long at most for its next row to fall due (a retry's backoff); a row due
# later (a reader's local morning, hours away) ends the run, and the dispatcher wakes the
# send again when that row falls due.
WAIT_IN_RUN = dt.timedelta(seconds=60)
# With a rate limit, claim no more than this many seconds of work ahead, so that a claimed
# row is handed over soon after the claim checked that its reader is still subscribed.
CLAIM_AHEAD_SECONDS = 5.0


class LeaseLost(Exception):
    """This worker could not renew its leases; its run stops before others take its rows."""


class GroupCommit:
    """Collects outcomes from all connections and writes them in one transaction at a time;
    `add` returns once the outcome is durable. Commits go through one session held on one
    connection for the whole run: a fresh session and pool check-out per commit cost more
    than the commit itself."""

    def __init__(self, engine: Engine, worker: str, clock: Callable[[], dt.datetime]) -> None:
        self.engine = engine
        self.worker = worker
        self.utcnow = clock
        self._batch = Outcomes()
        self._done: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._session: Session | None = None
        # PostgreSQL: a group all sent through one relay is one autocommit statement, on a
        # connection of its own (ledger.record_sent).
        self._one_statement = engine.dialect.name == "postgresql"
        self._autocommit: Connection | None = None
        self._using = threading.Lock()  # a cancelled run's write may still be in its thread
        # Fails with the first commit that does: the run stops on it even when no connection
        # is waiting on that commit any more (they overlap it with their next message).
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def add(self, fill: Callable[[Outcomes], None]) -> None:
        """Record one outcome with whatever else is waiting; return once it is durable."""
        fill(self._batch)
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        done = self._done
        async with self._lock:  # one commit at a time; later arrivals share the next one
            if self._done is done:
                batch, self._batch, self._done = self._batch, Outcomes(), None
                try:
                    await asyncio.to_thread(self._write, batch)
                except BaseException as exc:
                    done.set_exception(exc)
                    done.exception()  # mark retrieved; the waiters below re-raise it
                    if not self.failed.done() and isinstance(exc, Exception):
                        self.failed.set_exception(exc)
                    raise
                done.set_result(None)
        await done

    def _write(self, batch: Outcomes) -> None:
        with self._using:
            self._write_now(batch)

    def _write_now(self, batch: Outcomes) -> None:
        if self._one_statement and ledger.sent_through_one_relay(batch):
            self._write_sent(batch)
            return
        if self._session is None:
            self._session = Session(bind=self.engine.connect(), expire_on_commit=False)
        session = self._session
        try:
            ledger.record(session, batch, worker=self.worker, now=self.utcnow())
            session.commit()
        except BaseException:
            self._session = None  # the connection's state is unknown: never reuse it
            with contextlib.suppress(Exception):
                session.rollback()
                session.close()
                session.bind.close()  # type: ignore[union-attr]
            raise

    def _write_sent(self, batch: Outcomes) -> None:
        if self._autocommit is None:
            connection = self.engine.connect()
            self._autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            ledger.record_sent(self._autocommit, batch, worker=self.worker, now=self.utcnow())
        except BaseException:
            autocommit, self._autocommit = self._autocommit, None  # never reused after an error
            with contextlib.suppress(Exception):
                autocommit.close()
            raise

    async def close(self) -> None:
        """Give the held connections back (after the last `add`)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._using:
            autocommit, self._autocommit = self._autocommit, None
            if autocommit is not None:
                with contextlib.suppress(Exception):  # the database may be gone
                    autocommit.close()
            session, self._session = self._session, None
            if session is not None:
                with contextlib.suppress(Exception):  # the database may be gone
                    session.close()
                    session.bind.close()  # type: ignore[union-attr]


class SendWorker:
    """Delivers the rows of one send that this process can claim, until none are left,
    the send is paused, or `stop()` is called."""

    def __init__(self, courier: Courier, name: str | None = None) -> None:
        self.courier = courier
        self.engine = courier.engine
        self.ctx = courier.ctx
        self.settings = courier.settings
        self.target = courier.target
        self.name = name or worker_name()
        self.health = RelayHealth("the column")
        self._stopping = asyncio.Event()
        self._relay_streak = 0  # consecutive refusals about the relay, across connections
        self._pause_reason: str | None = None
        self._cancelled = False
        self._unsent: list[int] = []
        self._held: set[int] = set()  # claimed, not yet queued for a connection (being built)
        self.utcnow = courier.utcnow
        # Set when a run ends with rows that fall due later: when the first of them does.
        self.next_due: dt.datetime | None = None

    def stop(self) -> None:
        """Finish the hand-offs in progress, give back the rest, and return from run()."""
        self._stopping.set()

    def _job(self, send_id: int) -> Job:
        with transaction(self.engine) as session:
            send = session.get(Send, send_id)
            assert send is not None, f"send {send_id} does not exist"
            if send.status == SendStatus.paused:
                raise sends.SendPaused(send_id, send.pause_reason or "paused")
            if send.status == SendStatus.cancelled:
                raise sends.SendCancelled(send_id)
            deadline = sends.retry_deadline(send, self.settings.retry_deadline)
            if send.kind == SendKind.digest:
                return Job(
                    send_id=send_id,
                    prepared=None,
                    message_domain=f"{send.week}.{send_id}",
                    token_expiry=self.ctx.tokens.expiry(Purpose.unsubscribe),
                    deadline=deadline,
                    digests=DigestMails(self.engine, self.settings),
                    kind=SendKind.digest,
                )
            column = session.get(ColumnRecord, send.column_id)
            assert column is not None
        return job_for(
            self.courier,
            column,
            send_id=send_id,
            message_domain=f"{column.date.isoformat()}.{send_id}",
            deadline=deadline,
        )

    async def run(self, send_id: int) -> sends.SendCounts:
        """Deliver until the send is finished (by this worker or others) or stopped; return
        its counts. Raises SendPaused when the relay keeps refusing us."""
        job = await asyncio.to_thread(self._job, send_id)
        due = await in_thread(
            self.engine,
            ledger.claimable,
            send_id=send_id,
            now=self.utcnow(),
            up_to=PROCESS_MIN_ROWS,
        )
        await in_thread(self.engine, ledger.reclaim_own, send_id=send_id, worker=self.name)
        builders = await builders_for(job, self.ctx, due=due)
        s = self.settings
        # Built messages (~25 KB each) wait here: enough to keep every connection busy while
        # the next chunks build, not a whole claim batch (memory stays flat at any N).
        ahead = max(2 * BUILD_CHUNK * builders.in_flight, 2 * s.delivery_connections)
        queue: asyncio.Queue[Ready | None] = asyncio.Queue(maxsize=ahead)
        commit = GroupCommit(self.engine, self.name, self.utcnow)
        rate = delivery_rate(self.engine, send_id, s.delivery_rate)  # shared by all workers
        relays = relays_for(self.engine, s, self.target)
        connections = [
            RelayLink(relays, s.delivery_max_per_connection) for _ in range(s.delivery_connections)
        ]
        senders = [
            asyncio.create_task(self._deliver_from(queue, conn, job, commit, rate))
            for conn in connections
        ]
        claimer = asyncio.create_task(self._claim_into(queue, job, builders, len(senders)))
        lease_keeper = asyncio.create_task(self._keep_leases())
        watcher = asyncio.create_task(self._watch_send(send_id))
        tasks = [claimer, lease_keeper, watcher, commit.failed, *senders]
        try:
            await _until_senders_finish(tasks, senders)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._release_unsent(queue)
            await commit.close()
            await builders.close()
            for conn in connections:
                await conn.close()
        return await asyncio.to_thread(self._finish, send_id)

    async def _claim_into(
        self, queue: asyncio.Queue[Ready | None], job: Job, builders: Builders, senders: int
    ) -> None:
        s = self.settings
        lease = dt.timedelta(seconds=s.delivery_lease_seconds)
        limit = s.delivery_batch_size
        if s.delivery_rate > 0:
            limit = min(limit, max(senders, math.ceil(s.delivery_rate * CLAIM_AHEAD_SECONDS)))
        # Chunks being built, oldest first: they stay in flight while the next batch is
        # claimed, so the builders never wait for the database.
        building: collections.deque[asyncio.Future[list[Ready]]] = collections.deque()
        while not self._stopping.is_set():
            claimed = await in_thread(
                self.engine,
                ledger.claim_batch,
                send_id=job.send_id,
                worker=self.name,
                now=self.utcnow(),
                limit=limit,
                lease=lease,
            )
            claims = claimed
            if job.digests is not None and claimed:  # each digest's columns, fixed now
                claims = await in_thread(self.engine, digests.settle, claimed, self.utcnow())
            self._held.update(claim.id for claim in claims)
            for start in range(0, len(claims), BUILD_CHUNK):
                building.append(builders.build(claims[start : start + BUILD_CHUNK]))
                while len(building) > builders.in_flight:
                    await self._queue_built(queue, building.popleft())
            if claimed:
                continue
            while building:
                await self._queue_built(queue, building.popleft())
            await queue.join()  # our own in-flight outcomes are recorded before we look again
            if await asyncio.to_thread(self._nothing_left, job.send_id):
                break
            if await asyncio.to_thread(self._due_later, job.send_id):
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL):
                    await self._stopping.wait()
        for built in building:  # stopped: what was claimed but not queued is `_held`
            built.cancel()
        for _ in range(senders):
            await queue.put(None)

    async def _queue_built(
        self, queue: asyncio.Queue[Ready | None], built: asyncio.Future[list[Ready]]
    ) -> None:
        """Queue a chunk's messages for the connections in claim order. Rows claimed but not
        queued yet are `_held`, so that a stop gives them back."""
        for ready in await built:
            await queue.put(ready)
            self._held.discard(ready.claim.id)

    async def _watch_send(self, send_id: int) -> None:
        """Look at the send every IDLE_POLL seconds: once the operator (or another worker)
        paused or cancelled it, stop at once; the rows claimed but not yet handed over go
        back (a rate-limited worker may hold seconds of them)."""
        while not self._stopping.is_set():
            await asyncio.sleep(IDLE_POLL)
            with contextlib.suppress(Exception):  # a database blip: the claimer will notice
                status = await in_thread(self.engine, sends.status_of, send_id)
                if status in (SendStatus.paused, SendStatus.cancelled):
                    await asyncio.to_thread(self._nothing_left, send_id)
                    self._stopping.set()

    def _nothing_left(self, send_id: int) -> bool:
        """True when no row is left to try, or the send was paused or cancelled (by any
        worker, or the operator)."""
        with transaction(self.engine) as session:
            send = session.get(Send, send_id)
            if send is not None and send.status == SendStatus.paused:
                self._pause_reason = self._pause_reason or send.pause_reason or "paused"
                return True
            if send is not None and send.status == SendStatus.cancelled:
                self._cancelled = True
                return True
            return sends.counts(session, send_id).done

    def _due_later(self, send_id: int) -> bool:
        """True (and `next_due` set) when the send's next row falls due after WAIT_IN_RUN."""
        with transaction(self.engine) as session:
            due = sends.waiting_until(session, send_id, self.utcnow())
        if due is None or due <= self.utcnow() + WAIT_IN_RUN:
            return False
        self.next_due = due
        return True

    def _finish(self, send_id: int) -> sends.SendCounts:
        with transaction(self.engine) as session:
            if self._pause_reason is not None:
                sends.pause(session, send_id, self._pause_reason)
            elif not self._cancelled:
                sends.finish_if_done(session, send_id)
            counts = sends.counts(session, send_id)
        if self._pause_reason is not None:
            raise sends.SendPaused(send_id, self._pause_reason)
        if self._cancelled:
            raise sends.SendCancelled(send_id)
        return counts

    async def _deliver_from(
        self,
        queue: asyncio.Queue[Ready | None],
        link: RelayLink,
        job: Job,
        commit: GroupCommit,
        rate: SharedRate | None,
    ) -> None:
        # The last outcome's commit, under way while the next message goes over: that one is
        # ended (and so accepted) only once this is durable (SmtpConnection.send's `after`).
        recorded: asyncio.Future[None] | None = None
        try:
            while (ready := await queue.get()) is not None:
                taken = False  # by a commit, which marks the queue item done once durable
                try:
                    if rate is not None and not self._stopping.is_set():
                        await rate.acquire()
                    conn = await link.connection(self._stopping)  # waits while relays are capped
                    if conn is None or self._stopping.is_set():
                        self._unsent.append(ready.claim.id)
                        continue
                    try:
                        fill = await self._hand_off(conn, job, ready, recorded)
                    except Unended:
                        self._unsent.append(ready.claim.id)
                        assert recorded is not None
                        await recorded  # raises what the commit met
                        raise
                    recorded = asyncio.ensure_future(self._record(commit, fill, queue, recorded))
                    taken = True
                finally:
                    if not taken:
                        queue.task_done()
        finally:
            if recorded is not None:  # shielded: a sender cancelled now leaves it to finish
                await asyncio.shield(recorded)
        queue.task_done()

    @staticmethod
    async def _record(
        commit: GroupCommit,
        fill: Callable[[Outcomes], None],
        queue: asyncio.Queue[Ready | None],
        previous: asyncio.Future[None] | None,
    ) -> None:
        """Commit one outcome (with whatever else is waiting), then mark its queue item done:
        the claimer's `queue.join()` still means "every outcome is durable"."""
        try:
            await commit.add(fill)
            if previous is not None:  # committed already (commits go in order): its error
                await previous
        finally:
            queue.task_done()

    async def _hand_off(
        self, conn: SmtpConnection, job: Job, ready: Ready, after: asyncio.Future[None] | None
    ) -> Callable[[Outcomes], None]:
        """Send one message, ended once `after` is; return how to record what happened."""
        claim, reason = ready.claim, ready.unbuildable
        if ready.wire is None:
            return lambda o: o.failed.append((claim.id, reason or ledger.UNBUILDABLE))
        try:
            await conn.send(self.ctx.return_path(claim.id), claim.email, ready.wire, after=after)
        except SmtpFailure as failure:
            return await self._failed(job, claim, failure)
        self._relay_streak = 0
        self.health.succeeded()
        return lambda o: o.sent.append((claim.id, conn.target.endpoint.label))

    async def _failed(
        self, job: Job, claim: Claim, failure: SmtpFailure
    ) -> Callable[[Outcomes], None]:
        """A refusal about the reader's mailbox: failed and the reader suppressed. A refusal
        about the relay: retried like a 4xx, and after RELAY_FAILURE_THRESHOLD of them in a
        row the send pauses; no reader changes state. 4xx and outages: retried with backoff
        until the deadline; an outage is logged once and pauses this connection briefly."""
        if failure.fault is Fault.recipient:
            self._relay_streak = 0
            log.info("delivery %s refused for good: %s", claim.id, failure)
            refused = Refused(
                row_id=claim.id,
                subscriber_id=claim.subscriber_id,
                email=claim.email,
                address_hash=self.ctx.tokens.address_hash(claim.email),
                reason=failure.reason,
                status=failure.status,
            )
            return lambda o: o.bounced.append(refused)
        if failure.fault is Fault.relay:
            self._relay_problem(job, failure)
        now = self.utcnow()
        s = self.settings
        when = next_attempt(
            now, claim.attempts, initial=s.retry_initial_seconds, maximum=s.retry_max_seconds
        )
        # A reader due hours after the send began (their local morning) gets the whole
        # RETRY_DEADLINE from their own due moment.
        deadline = job.deadline
        if claim.due_at is not None:
            deadline = max(deadline, claim.due_at + s.retry_deadline)
        if when > deadline:
            reason = f"{ledger.GAVE_UP}: {failure.reason}"[:1000]
            return lambda o: o.failed.append((claim.id, reason))
        self.health.failed(failure)
        if failure.connection_lost:
            await asyncio.sleep(min(s.retry_initial_seconds, 5.0))
        return lambda o: o.retry.append((claim.id, when, failure.reason))

    def _relay_problem(self, job: Job, failure: SmtpFailure) -> None:
        self._relay_streak += 1
        threshold = self.settings.relay_failure_threshold
        if self._relay_streak < threshold or self._pause_reason is not None:
            return
        self._pause_reason = f"the relay refused {threshold} messages in a row: {failure.reason}"
        log.error(
            "send %s paused: %s. No reader was changed; fix the relay (credentials, account, "
            "policy), then resume with `broadside send --date …`",
            job.send_id,
            self._pause_reason,
        )
        self._stopping.set()

    async def _keep_leases(self) -> None:
        period = self.settings.delivery_lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            until = self.utcnow() + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
            try:
                await in_thread(self.engine, ledger.renew, worker=self.name, until=until)
            except Exception as exc:
                log.error(
                    "worker %s cannot renew its leases (%s); stopping its run", self.name, exc
                )
                raise LeaseLost(str(exc)) from exc

    async def _release_unsent(self, queue: asyncio.Queue[Ready | None]) -> None:
        unsent, self._unsent = [*self._unsent, *self._held], []
        self._held = set()
        while not queue.empty():
            ready = queue.get_nowait()
            if ready is not None:
                unsent.append(ready.claim.id)
        with contextlib.suppress(Exception):  # if this fails too, the leases expire instead
            now = self.utcnow()
            await in_thread(self.engine, ledger.release, worker=self.name, ids=unsent, now=now)


async def _until_senders_finish(
    tasks: list[asyncio.Future[None]], senders: list[asyncio.Task[None]]
) -> None:
    """Wait for every sender to drain; the first task to fail (the database went away, the
    leases could not be renewed) fails the whole run."""
    watched = set(tasks)
    while not all(task.done() for task in senders):
        done, watched = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

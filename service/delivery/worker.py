"""Deliver one send: claim batches, hand each message to SMTP over K reused connections,
and record every outcome durably before the connection takes its next message.

Crash safety (design rule 2): a row is committed as `sending` (claimed, with a lease)
before its hand-off and as `sent` after it; each connection waits for that second commit
before it starts another message. So when the process is killed at any instant, at most
K messages (one per connection) were accepted by the relay but not yet recorded; those
rows' leases expire and they are sent again. Every other row is either recorded as sent
or was never handed over. The commits are grouped: whatever the K connections finish
while one commit runs goes into the next, so the ledger costs one transaction per group,
not per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter
from sqlalchemy.engine import Engine

from ..clock import utcnow
from ..config import SmtpTarget
from ..context import AppContext
from ..db import transaction
from ..mail.column import PreparedColumn, column_view, prepare_column
from ..mail.smtp import SmtpConnection, SmtpFailure
from ..models import ColumnRecord, Send
from ..retry import next_attempt
from ..tokens import Purpose
from . import ledger, sends
from .ledger import Claim, Outcomes

log = logging.getLogger(__name__)
IDLE_POLL = 1.0  # seconds between looks when the rest of the send is deferred or elsewhere


def worker_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Job:
    """What every message of this send shares, computed once."""

    send_id: int
    created_at: dt.datetime
    prepared: PreparedColumn
    message_domain: str
    token_expiry: int
    deadline: dt.datetime


class GroupCommit:
    """Collects outcomes from all connections and writes them in one transaction at a time;
    `add` returns once the outcome is durable."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._batch = Outcomes()
        self._done: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    async def add(self, fill: Callable[[Outcomes], None]) -> None:
        fill(self._batch)
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        done = self._done
        async with self._lock:  # one commit at a time; later arrivals share the next one
            if self._done is done:
                batch, self._batch, self._done = self._batch, Outcomes(), None
                try:
                    await asyncio.to_thread(ledger.record, self.engine, batch, utcnow())
                except BaseException as exc:
                    done.set_exception(exc)
                    done.exception()  # mark retrieved; the waiters below re-raise it
                    raise
                done.set_result(None)
        await done


class SendWorker:
    """Delivers the rows of one send that this process can claim, until none are left."""

    def __init__(
        self, engine: Engine, ctx: AppContext, target: SmtpTarget, name: str | None = None
    ) -> None:
        self.engine = engine
        self.ctx = ctx
        self.settings = ctx.settings
        self.target = target
        self.name = name or worker_name()
        self._outage = False

    def _job(self, send_id: int) -> Job:
        with transaction(self.engine) as session:
            send = session.get(Send, send_id)
            assert send is not None, f"send {send_id} does not exist"
            column = session.get(ColumnRecord, send.column_id)
            assert column is not None
        prepared = prepare_column(column_view(column), self.settings)
        return Job(
            send_id=send_id,
            created_at=send.created_at,
            prepared=prepared,
            message_domain=f"{column.date.isoformat()}.{send_id}",
            deadline=send.created_at + self.settings.retry_deadline,
            token_expiry=self.ctx.tokens.expiry(Purpose.unsubscribe),
        )

    async def run(self, send_id: int) -> sends.SendCounts:
        """Deliver until the send is finished (by this worker or others); return its counts."""
        job = await asyncio.to_thread(self._job, send_id)
        s = self.settings
        queue: asyncio.Queue[Claim | None] = asyncio.Queue(maxsize=s.delivery_batch_size)
        commit = GroupCommit(self.engine)
        limiter = AsyncLimiter(s.delivery_rate, 1) if s.delivery_rate > 0 else None
        connections = [
            SmtpConnection(self.target, s.delivery_max_per_connection)
            for _ in range(s.delivery_connections)
        ]
        senders = [
            asyncio.create_task(self._deliver_from(queue, conn, job, commit, limiter))
            for conn in connections
        ]
        lease_keeper = asyncio.create_task(self._keep_leases())
        claimer = asyncio.create_task(self._claim_into(queue, job))
        try:
            # A sender that dies (the database went away) must stop the claimer too.
            finished, _ = await asyncio.wait(
                [claimer, *senders], return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                task.result()
            for _ in senders:
                await queue.put(None)
            await asyncio.gather(*senders)
        finally:
            for task in (claimer, lease_keeper, *senders):
                task.cancel()
            await asyncio.gather(claimer, lease_keeper, *senders, return_exceptions=True)
            await self._release_unsent(queue)
            for conn in connections:
                await conn.close()
        return await asyncio.to_thread(self._finish, send_id)

    async def _claim_into(self, queue: asyncio.Queue[Claim | None], job: Job) -> None:
        s = self.settings
        lease = dt.timedelta(seconds=s.delivery_lease_seconds)
        while True:
            claims = await asyncio.to_thread(
                ledger.claim_batch,
                self.engine,
                send_id=job.send_id,
                worker=self.name,
                now=utcnow(),
                limit=s.delivery_batch_size,
                lease=lease,
            )
            for claim in claims:
                await queue.put(claim)
            if claims:
                continue
            await queue.join()  # our own in-flight outcomes are recorded before we look again
            if await asyncio.to_thread(self._nothing_left, job.send_id):
                return
            await asyncio.sleep(IDLE_POLL)

    def _nothing_left(self, send_id: int) -> bool:
        with transaction(self.engine) as session:
            return sends.counts(session, send_id).done

    def _finish(self, send_id: int) -> sends.SendCounts:
        with transaction(self.engine) as session:
            sends.finish_if_done(session, send_id)
            return sends.counts(session, send_id)

    async def _deliver_from(
        self,
        queue: asyncio.Queue[Claim | None],
        conn: SmtpConnection,
        job: Job,
        commit: GroupCommit,
        limiter: AsyncLimiter | None,
    ) -> None:
        while (claim := await queue.get()) is not None:
            try:
                if limiter is not None:
                    await limiter.acquire()
                await commit.add(await self._hand_off(conn, job, claim))
            finally:
                queue.task_done()
        queue.task_done()

    async def _hand_off(
        self, conn: SmtpConnection, job: Job, claim: Claim
    ) -> Callable[[Outcomes], None]:
        """Send one message; return how to record what happened."""
        try:
            data = self._message(job, claim)
        except ValueError as exc:  # an address or name we cannot put in a header
            reason = f"cannot build message: {exc}"[:1000]
            return lambda o: o.failed.append((claim.id, reason))
        try:
            await conn.send(self.settings.mail_from, claim.email, data)
        except SmtpFailure as failure:
            return await self._failed(job, claim, failure)
        if self._outage:
            self._outage = False
            log.info("SMTP relay reachable again; send %s continues", job.send_id)
        return lambda o: o.sent.append(claim.id)

    def _message(self, job: Job, claim: Claim) -> bytes:
        ctx = self.ctx
        return job.prepared.message_bytes(
            to=claim.email,
            name=claim.name,
            unsubscribe_url=ctx.unsubscribe_url(claim.subscriber_id, job.token_expiry),
            feedback_url=ctx.feedback_url(claim.subscriber_id, job.token_expiry),
            message_id=f"<column.{job.message_domain}.{claim.subscriber_id}@{self.settings.mail_domain}>",
        )

    async def _failed(
        self, job: Job, claim: Claim, failure: SmtpFailure
    ) -> Callable[[Outcomes], None]:
        """5xx: failed and the reader suppressed. 4xx and outages: retried with backoff until
        the deadline; an outage is logged once and pauses this connection, not the send."""
        if failure.permanent:
            log.info("delivery %s to %s refused for good: %s", claim.id, claim.email, failure)
            return lambda o: o.bounced.append((claim.id, claim.subscriber_id, failure.reason))
        now = utcnow()
        s = self.settings
        when = next_attempt(
            now, claim.attempts, initial=s.retry_initial_seconds, maximum=s.retry_max_seconds
        )
        if when > job.deadline:
            reason = f"gave up after the retry deadline: {failure.reason}"[:1000]
            return lambda o: o.failed.append((claim.id, reason))
        if failure.connection_lost:
            if not self._outage:
                self._outage = True
                log.warning("SMTP relay trouble (%s); deferring and retrying", failure)
            await asyncio.sleep(min(s.retry_initial_seconds, 5.0))
        return lambda o: o.retry.append((claim.id, when, failure.reason))

    async def _keep_leases(self) -> None:
        period = self.settings.delivery_lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            until = utcnow() + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
            await asyncio.to_thread(ledger.renew, self.engine, worker=self.name, until=until)

    async def _release_unsent(self, queue: asyncio.Queue[Claim | None]) -> None:
        unsent = []
        while not queue.empty():
            claim = queue.get_nowait()
            if claim is not None:
                unsent.append(claim.id)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(ledger.release, self.engine, ids=unsent, now=utcnow())

"""Build each reader's copy of a send's mail (the splice and the DKIM signature) off the event
loop: in child processes for a large send, so that the build has a core of its own beside the
SMTP work and the ledger writes instead of sharing one interpreter's lock with them; in two
threads of the send's own for a small one, which a process would cost a second to start."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..columns.mail import PreparedColumn, ReaderValues, prepare_column
from ..columns.view import column_view
from ..config import Settings
from ..context import AppContext, build_context
from ..mail.smtp import Stuffed
from ..models import ColumnRecord, SendKind
from ..tokens import Purpose
from .courier import Courier
from .digests import DigestMails
from .ledger import UNBUILDABLE, Claim

log = logging.getLogger(__name__)

# Messages built per trip to a builder. Building ahead, off the event loop, lets the DKIM
# signature (OpenSSL, which lets go of the GIL) run on another core beside the SMTP work.
BUILD_CHUNK = 16
BUILDER_THREADS = 2  # two signatures in flight keep both cores busy
# A send with at least this many rows due builds in child processes (when configured): below
# it, starting one (about a second) costs more than it saves.
PROCESS_MIN_ROWS = 2_000


@dataclass(frozen=True)
class Job:
    """What every message of this send shares, computed once."""

    send_id: int
    prepared: PreparedColumn | None  # the column; None for a digest send
    message_domain: str  # the Message-ID's middle: stable per send, so per reader across retries
    token_expiry: int
    deadline: dt.datetime
    digests: DigestMails | None = None  # a digest send's mails, one per set of columns
    kind: str = SendKind.column  # the Message-ID's start

    def mail(self, contents: str | None) -> PreparedColumn:
        """The prepared mail of a claimed row: the column, or the digest of its contents."""
        if self.digests is not None and contents:
            return self.digests.mail(contents)
        assert self.prepared is not None, "a digest row without contents"
        return self.prepared


def job_for(
    courier: Courier,
    column: ColumnRecord,
    *,
    send_id: int,
    message_domain: str,
    deadline: dt.datetime,
) -> Job:
    """Render and encode `column` once for a send (or a preview) to many readers."""
    return Job(
        send_id=send_id,
        prepared=prepare_column(column_view(column), courier.settings),
        message_domain=message_domain,
        deadline=deadline,
        token_expiry=courier.ctx.tokens.expiry(Purpose.unsubscribe),
    )


def message_for(job: Job, ctx: AppContext, *, subscriber_id: int, email: str, name: str) -> bytes:
    """One reader's copy of the column: their name, their own signed links, a Message-ID that
    stays the same across retries (so a receiver can spot a duplicate), DKIM-signed when
    configured."""
    return job.mail(None).message_bytes(**_reader_values(job, ctx, subscriber_id, email, name))


def wire_for(
    job: Job,
    ctx: AppContext,
    *,
    subscriber_id: int,
    email: str,
    name: str,
    contents: str | None = None,
) -> Stuffed:
    """`message_for` as SMTP DATA carries it, from pieces stuffed once per send (or once per
    digest's `contents`)."""
    values = _reader_values(job, ctx, subscriber_id, email, name)
    return job.mail(contents).stuffed(**values)


def _reader_values(
    job: Job, ctx: AppContext, subscriber_id: int, email: str, name: str
) -> ReaderValues:
    domain = ctx.settings.mail_domain
    return {
        "to": email,
        "name": name,
        "unsubscribe_url": ctx.unsubscribe_url(subscriber_id, job.token_expiry),
        "feedback_url": ctx.feedback_url(subscriber_id, job.token_expiry),
        "preferences_url": ctx.preferences_url(subscriber_id, job.token_expiry),
        "message_id": f"<{job.kind}.{job.message_domain}.{subscriber_id}@{domain}>",
        "unsubscribe_mailto": ctx.unsubscribe_mailto(subscriber_id),
        "signer": ctx.dkim,
    }


@dataclass(frozen=True, slots=True)
class Ready:
    """A claimed row with its reader's message built, or the reason it cannot be."""

    claim: Claim
    wire: Stuffed | None
    unbuildable: str | None = None


def build_ready(job: Job, ctx: AppContext, claims: Sequence[Claim]) -> list[Ready]:
    """The messages for a few claimed rows (in a builder thread or process)."""
    ready = []
    for claim in claims:
        try:
            wire = wire_for(
                job,
                ctx,
                subscriber_id=claim.subscriber_id,
                email=claim.email,
                name=claim.name,
                contents=claim.contents,
            )
        except ValueError as exc:  # an address or name we cannot put in a header
            ready.append(Ready(claim, None, f"{UNBUILDABLE}: {exc}"[:1000]))
        else:
            ready.append(Ready(claim, wire))
    return ready


class Builders:
    """Where one run builds its messages: a pool of the send's own threads, or of child
    processes that each hold the job and a context of their own."""

    def __init__(
        self, job: Job, ctx: AppContext, executor: concurrent.futures.Executor, *, processes: int
    ) -> None:
        self.job = job
        self.ctx = ctx
        self.processes = processes
        self._executor = executor
        self._fallback: concurrent.futures.Executor | None = None  # threads, if a process died
        # Chunks in flight: each builder busy, and one more waiting for the first free one.
        self.in_flight = processes + 1 if processes else BUILDER_THREADS

    def build(self, claims: list[Claim]) -> asyncio.Future[list[Ready]]:
        """Build `claims`' messages (a chunk of BUILD_CHUNK at most) off the event loop."""
        if not self.processes:
            return self._in_thread(claims)
        return asyncio.ensure_future(self._in_child(claims))

    def _in_thread(self, claims: list[Claim]) -> asyncio.Future[list[Ready]]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._threads(), build_ready, self.job, self.ctx, claims)

    async def _in_child(self, claims: list[Claim]) -> list[Ready]:
        loop = asyncio.get_running_loop()
        try:
            built = await loop.run_in_executor(self._executor, _build_in_child, claims)
        except concurrent.futures.BrokenExecutor as exc:
            # A builder died (the kernel's OOM killer, a signal): the send goes on in threads.
            if self._fallback is None:
                log.error(
                    "send %s: a builder process died (%s); building in threads",
                    self.job.send_id,
                    exc,
                )
            return await self._in_thread(claims)
        return [
            Ready(claim, wire, unbuildable)
            for claim, (wire, unbuildable) in zip(claims, built, strict=True)
        ]

    def _threads(self) -> concurrent.futures.Executor:
        if not self.processes:
            return self._executor
        if self._fallback is None:
            self._fallback = _thread_pool()
        return self._fallback

    def close(self) -> None:
        """Stop the builders; a chunk still building is dropped (its rows are given back)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._fallback is not None:
            self._fallback.shutdown(wait=False, cancel_futures=True)


def builders_for(job: Job, ctx: AppContext, *, due: int) -> Builders:
    """Threads for a small run or a digest send (whose mails are looked up in the database as
    its rows come); DELIVERY_BUILD_PROCESSES child processes for a column with `due` rows of
    PROCESS_MIN_ROWS or more."""
    processes = ctx.settings.delivery_build_processes
    if processes and job.digests is None and due >= PROCESS_MIN_ROWS:
        # Spawned, not forked: the parent runs threads and holds database connections.
        pool = concurrent.futures.ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(ctx.settings, job, os.getpid()),
        )
        log.info("send %s: %d rows due, built in %d child process(es)", job.send_id, due, processes)
        return Builders(job, ctx, pool, processes=processes)
    return Builders(job, ctx, _thread_pool(), processes=0)


def _thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    # Few threads, always the same: each thread that allocates 25 KB messages gets a malloc
    # arena of its own, which does not shrink.
    return concurrent.futures.ThreadPoolExecutor(BUILDER_THREADS, thread_name_prefix="build")


# A child process's job and context, set once when it starts.
_child: tuple[Job, AppContext] | None = None


def _start_child(settings: Settings, job: Job, parent: int) -> None:
    global _child
    _child = (job, build_context(settings))  # the same tokens and DKIM keys as the parent's
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="orphan").start()


def _exit_with(parent: int) -> None:
    """A killed worker (the crash the ledger is built for) cannot stop its builders: they stop
    themselves once their parent is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _build_in_child(claims: list[Claim]) -> list[tuple[Stuffed | None, str | None]]:
    """`build_ready` in a child process; only the wire bytes travel back."""
    assert _child is not None, "a builder process without its job"
    job, ctx = _child
    return [(ready.wire, ready.unbuildable) for ready in build_ready(job, ctx, claims)]

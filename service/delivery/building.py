"""Build each reader's copy of a send's mail (the splice and the DKIM signature) off the event
loop: in two threads of the send's own, which sign beside the SMTP work since OpenSSL lets go of
the interpreter's lock while it signs; or, when DELIVERY_BUILD_PROCESSES asks for them, in
builder processes for a large send, which take the build's Python work off that lock too, for
~33 MB each and a second to start."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import logging
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..columns.mail import PreparedColumn, prepare_column
from ..columns.view import column_view
from ..context import AppContext
from ..mail.wire import Stuffed
from ..models import ColumnRecord, SendKind
from ..tokens import Purpose
from . import builder
from .builder import Built, Kit, Reader
from .courier import Courier
from .digests import DigestMails
from .ledger import UNBUILDABLE, Claim

log = logging.getLogger(__name__)

# Messages built per trip to a builder. Building ahead, off the event loop, lets the DKIM
# signature (OpenSSL, which lets go of the GIL) run on another core beside the SMTP work.
BUILD_CHUNK = 16
BUILDER_THREADS = 2  # two signatures in flight keep both cores busy
# A send with at least this many rows due builds in builder processes (when configured):
# below it, starting one (about a second) costs more than it saves.
PROCESS_MIN_ROWS = 2_000
# How long a builder may take to finish its chunk and exit once the send is done with it.
BUILDER_EXIT_SECONDS = 5.0
REPLY_BUFFER = 2**20  # a chunk's reply is ~16 messages of ~25 KB


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


def kit_for(job: Job, ctx: AppContext) -> Kit:
    """What every reader's copy of `job`'s mail shares: their links' signer and expiry, the
    DKIM signer, how a Message-ID is made."""
    return Kit(
        links=ctx.links,
        signer=ctx.dkim,
        mail_domain=ctx.settings.mail_domain,
        kind=str(job.kind),  # a plain str: the enum would load the tables into a builder
        message_domain=job.message_domain,
        token_expiry=job.token_expiry,
    )


def message_for(job: Job, ctx: AppContext, *, subscriber_id: int, email: str, name: str) -> bytes:
    """One reader's copy of the column: their name, their own signed links, a Message-ID that
    stays the same across retries (so a receiver can spot a duplicate), DKIM-signed when
    configured."""
    values = kit_for(job, ctx).values(subscriber_id, email, name)
    return job.mail(None).message_bytes(**values)


@dataclass(frozen=True, slots=True)
class Ready:
    """A claimed row with its reader's message built, or the reason it cannot be."""

    claim: Claim
    wire: Stuffed | None
    unbuildable: str | None = None


def build_ready(job: Job, kit: Kit, claims: Sequence[Claim]) -> list[Ready]:
    """The messages for a few claimed rows (in a builder thread), each from its own mail: the
    column, or the digest of the columns it holds."""
    built = [builder.build(kit, job.mail(c.contents), [_reader(c)])[0] for c in claims]
    return _ready(claims, built)


def _reader(claim: Claim) -> Reader:
    return (claim.subscriber_id, claim.email, claim.name)


def _ready(claims: Sequence[Claim], built: Sequence[Built]) -> list[Ready]:
    return [
        Ready(claim, wire, None if problem is None else f"{UNBUILDABLE}: {problem}"[:1000])
        for claim, (wire, problem) in zip(claims, built, strict=True)
    ]


class BuilderGone(Exception):
    """A builder process ended before it answered (killed by a signal or the OOM killer)."""


class _Process:
    """One builder process (builder.py) and the chunks it was asked for: it answers them in
    the order they were asked."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._asked: collections.deque[asyncio.Future[list[Built]]] = collections.deque()
        self._closing = False
        self.alive = True
        self.ended = ""  # why it ended, once it has
        self._replies = asyncio.create_task(self._read_replies())

    @classmethod
    async def start(cls, kit: Kit, mail: PreparedColumn) -> _Process:
        """A builder process that holds `kit` and `mail` (sent once, over its pipe)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            builder.__name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=REPLY_BUFFER,
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(builder.frame((kit, mail)))
        except BaseException:  # the kit or the mail would not pickle: no builder left behind
            proc.kill()
            await proc.wait()
            raise
        return cls(proc)

    @property
    def waiting(self) -> int:
        """Chunks asked for and not answered yet."""
        return len(self._asked)

    async def build(self, readers: list[Reader]) -> list[Built]:
        """`readers`' copies, built in the process; BuilderGone if it ended first."""
        if not self.alive:
            raise BuilderGone("ended before")
        answer: asyncio.Future[list[Built]] = asyncio.get_running_loop().create_future()
        self._asked.append(answer)
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(builder.frame(readers))
            await self._proc.stdin.drain()
        except ConnectionError as exc:  # its end of the pipe is closed: it is gone
            self._gone(f"its pipe: {exc}")
        return await answer

    async def _read_replies(self) -> None:
        replies = self._proc.stdout
        assert replies is not None
        try:
            while True:
                header = await replies.readexactly(builder.LENGTH_SIZE)
                data = await replies.readexactly(builder.frame_length(header))
                answer = self._asked.popleft()
                if not answer.done():  # a chunk the worker stopped waiting for is dropped
                    answer.set_result(pickle.loads(data))
        except (asyncio.IncompleteReadError, ConnectionError):
            self._gone(f"exit status {await self._proc.wait()}")

    def _gone(self, why: str) -> None:
        if self.alive:
            self.ended = why
        self.alive = False
        while self._asked:
            answer = self._asked.popleft()
            if self._closing:
                answer.cancel()
            elif not answer.done():
                answer.set_exception(BuilderGone(why))

    async def close(self) -> None:
        """Close the process's pipe: it finishes the chunk in hand and exits, or is killed
        if it has not within BUILDER_EXIT_SECONDS."""
        self._closing = True
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            async with asyncio.timeout(BUILDER_EXIT_SECONDS):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._replies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replies
        self._gone("closed")


class Builders:
    """Where one run builds its messages: builder processes that each hold the mail and the
    kit, or, for a small run (and when a process dies), a pool of the send's own threads."""

    def __init__(self, job: Job, kit: Kit, processes: list[_Process]) -> None:
        self.job = job
        self.kit = kit
        self._processes = processes
        # Few threads, always the same: each thread that allocates 25 KB messages gets a
        # malloc arena of its own, which does not shrink. None start until one is needed.
        self._threads = concurrent.futures.ThreadPoolExecutor(
            BUILDER_THREADS, thread_name_prefix="build"
        )
        self._told = False  # that a builder process died
        # Chunks in flight: each builder busy, and one more waiting for the first free one.
        self.in_flight = len(processes) + 1 if processes else BUILDER_THREADS

    def build(self, claims: list[Claim]) -> asyncio.Future[list[Ready]]:
        """Build `claims`' messages (a chunk of BUILD_CHUNK at most) off the event loop."""
        live = [process for process in self._processes if process.alive]
        if len(live) < len(self._processes):
            self._tell_gone()
        if not live:
            return self._in_thread(claims)
        least_busy = min(live, key=lambda process: process.waiting)
        return asyncio.ensure_future(self._in_process(least_busy, claims))

    def _in_thread(self, claims: list[Claim]) -> asyncio.Future[list[Ready]]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._threads, build_ready, self.job, self.kit, claims)

    async def _in_process(self, process: _Process, claims: list[Claim]) -> list[Ready]:
        try:
            built = await process.build([_reader(claim) for claim in claims])
        except BuilderGone:
            # A builder died (the kernel's OOM killer, a signal): the send goes on in threads.
            self._tell_gone()
            return await self._in_thread(claims)
        return _ready(claims, built)

    def _tell_gone(self) -> None:
        if self._told:
            return
        self._told = True
        why = "; ".join(process.ended for process in self._processes if not process.alive)
        log.error(
            "send %s: a builder process died (%s); building in threads", self.job.send_id, why
        )

    async def close(self) -> None:
        """Stop the builders; a chunk still building is dropped (its rows are given back)."""
        await asyncio.gather(*(process.close() for process in self._processes))
        self._threads.shutdown(wait=False, cancel_futures=True)


async def builders_for(job: Job, ctx: AppContext, *, due: int) -> Builders:
    """DELIVERY_BUILD_PROCESSES builder processes for a column with `due` rows of
    PROCESS_MIN_ROWS or more; otherwise threads: with none configured (the default), for a
    small run, and for a digest send (whose mails are looked up in the database as its rows
    come)."""
    kit = kit_for(job, ctx)
    count = ctx.settings.delivery_build_processes
    if not count or job.digests is not None or due < PROCESS_MIN_ROWS:
        return Builders(job, kit, [])
    assert job.prepared is not None, "a column send without its mail"
    processes: list[_Process] = []
    try:
        for _ in range(count):
            processes.append(await _Process.start(kit, job.prepared))
    except OSError as exc:  # no process to be had (a process or file limit): threads, then
        log.warning("send %s: no builder process (%s); building in threads", job.send_id, exc)
    except Exception as exc:  # the kit would not pickle (a bug): threads need no pickling
        log.error("send %s: no builder process (%r); building in threads", job.send_id, exc)
    log.info(
        "send %s: %d rows due, built in %d child process(es)", job.send_id, due, len(processes)
    )
    return Builders(job, kit, processes)

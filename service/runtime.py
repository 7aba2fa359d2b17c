"""The long-running pieces a process needs besides requests: the SMTP target (relay or
embedded capture server), the outbox sender, the daily scheduler and the bounce receiver.
Shared by `broadside serve` (the app's lifespan), `broadside worker` and `broadside bounces`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from .bounces.imap import poll_forever
from .bounces.receiver import BounceReceiver
from .config import SHUTDOWN_GRACE
from .context import AppContext
from .delivery.courier import Courier
from .delivery.daily import Dispatcher
from .mail.capture import smtp_target
from .mail.outbox import OutboxSender
from .mail.smtp import SmtpTarget
from .metrics import served_on_port
from .scheduler import start_scheduler


def freeze_start_up() -> None:
    """Take what a long-running process built at start-up (its modules, the app, the engine,
    the templates: a few hundred thousand objects) out of the cyclic garbage collector's
    sight. Each full collection walked all of it, pausing the event loop for tens of
    milliseconds: under a burst of sign-ups it was the p99 (docs/BENCHMARKS.md, G6)."""
    gc.collect()
    gc.freeze()


@dataclass
class Runtime:
    """What the background pieces expose to the app while it runs."""

    target: SmtpTarget
    outbox: OutboxSender
    dispatcher: Dispatcher


@asynccontextmanager
async def background(engine: Engine, ctx: AppContext, *, scheduler: bool) -> AsyncIterator[Runtime]:
    """The outbox sender and (with `scheduler`) the daily send, its heal and the watch that
    joins other processes' sends within seconds, for as long as the caller runs, and the
    metrics on METRICS_PORT when it is set; at the end, everything in progress stops within
    SHUTDOWN_GRACE."""
    with smtp_target(ctx.settings) as target, served_on_port(engine, ctx.settings):
        sender = OutboxSender(engine, ctx.settings, target)
        dispatcher = Dispatcher(Courier(engine, ctx, target))
        task = asyncio.create_task(sender.run(), name="outbox-sender")
        daily = start_scheduler(dispatcher) if scheduler else None
        watching = None
        if scheduler:
            watching = asyncio.create_task(dispatcher.watch_sends(), name="send-watch")
        try:
            yield Runtime(target, sender, dispatcher)
        finally:
            if daily is not None:
                daily.shutdown(wait=False)
            sender.stop()
            dispatcher.stop()
            if watching is not None:
                await watching  # returns at stop(); a look in progress is one short query
            await dispatcher.wait(SHUTDOWN_GRACE)
            try:
                await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@asynccontextmanager
async def bounce_mailbox(engine: Engine, ctx: AppContext) -> AsyncIterator[None]:
    """With BOUNCE_IMAP_URL, its poller runs for as long as the caller does."""
    if ctx.settings.bounce_imap_url is None:
        yield
        return
    task = asyncio.create_task(poll_forever(engine, ctx), name="bounce-imap-poller")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def bounce_receiver(engine: Engine, ctx: AppContext, port: int | None = None) -> Iterator[int]:
    """The bounce receiver listening for as long as the caller runs; yields its port.
    OSError (naming the address) when the port is taken."""
    receiver = BounceReceiver(engine, ctx, port=port)
    try:
        receiver.start()
    except OSError as exc:
        raise OSError(f"cannot listen on {receiver.host}:{receiver.port}: {exc.strerror}") from exc
    try:
        yield receiver.port
    finally:
        receiver.stop()

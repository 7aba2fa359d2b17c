"""What the CLI shows: a send's plan and live progress, the status table, import reports.
Rich output lives here so that the domain modules never print."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from .columns import sources, store
from .columns.mail import mail_size_check, prepare_column
from .columns.view import column_view
from .config import Settings
from .context import build_context
from .db import transaction
from .delivery import daily, sends
from .delivery.daily import Dispatcher
from .mail.smtp import SmtpConnection, SmtpFailure
from .models import ColumnRecord, Send, Subscriber, SubscriberStatus
from .runtime import SHUTDOWN_GRACE, smtp_target

out = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
PROGRESS_EVERY = 0.5  # seconds


@dataclass(frozen=True)
class Plan:
    day: dt.date
    column: ColumnRecord | None
    readers: int
    send: Send | None


def plan(engine: Engine, settings: Settings, day: dt.date) -> Plan:
    """Refresh the columns, then say what a send of `day` would do."""
    daily.refresh_columns(engine, settings)
    with transaction(engine) as session:
        column = store.column_for(session, day)
        readers = session.exec(
            select(func.count()).where(Subscriber.status == SubscriberStatus.active)
        ).one()
        existing = None
        if column is not None:
            existing = session.exec(select(Send).where(Send.column_id == column.id)).first()
    return Plan(day, column, readers, existing)


def print_plan(p: Plan) -> None:
    assert p.column is not None
    out.print(f"[bold]{p.column.title}[/]  ({p.day.isoformat()}, /columns/{p.column.slug})")
    if p.send is not None:
        out.print(
            f"already sent or sending: send {p.send.id}, {p.send.total} readers, {p.send.status}"
        )
    else:
        out.print(f"would go to {p.readers} active readers; nothing sent (--dry-run)")


@dataclass(frozen=True)
class SendOutcome:
    send_id: int
    counts: sends.SendCounts
    paused: str | None = None  # the relay's reason, when the send paused
    stopped: bool = False  # a signal stopped it before the end


async def send_with_progress(engine: Engine, settings: Settings, p: Plan) -> SendOutcome:
    """Start (or resume, or un-pause) the send of the plan's column and deliver it here,
    with a progress bar. SIGTERM or Ctrl-C stops it gracefully: the hand-offs in progress
    finish and are recorded, the rest is given back, within SHUTDOWN_GRACE seconds."""
    assert p.column is not None
    ctx = build_context(settings)
    if p.send is not None and p.send.status == "paused":
        with transaction(engine) as session:
            sends.resume(session, p.send.id or 0)
        out.print(f"un-pausing send {p.send.id} (paused: {p.send.pause_reason})")
    send, created = await asyncio.to_thread(daily.start_send, engine, settings, p.column)
    send_id = send.id or 0
    out.print(f"{'starting' if created else 'resuming'} send {send_id}: [bold]{p.column.title}[/]")
    with smtp_target(settings) as target:
        dispatcher = Dispatcher(engine, ctx, target)
        task = asyncio.create_task(dispatcher.resume(send_id))
        stopped = _stop_on_signals(dispatcher, task)
        await _show_progress(engine, send_id, task)
        try:
            await task
        except sends.SendPaused as paused:
            return SendOutcome(send_id, _counts(engine, send_id), paused=paused.reason)
        except asyncio.CancelledError:
            if not stopped.is_set():
                raise
    counts = _counts(engine, send_id)
    out.print(
        f"send {send_id}: {counts.sent} sent, {counts.failed} failed, "
        f"{counts.skipped} skipped, {counts.pending} left"
    )
    return SendOutcome(send_id, counts, stopped=stopped.is_set())


def _stop_on_signals(dispatcher: Dispatcher, task: asyncio.Task[object]) -> asyncio.Event:
    """SIGTERM/SIGINT: stop gracefully, and cancel what still runs after SHUTDOWN_GRACE."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def stop() -> None:
        if stopped.is_set():
            task.cancel()  # a second signal: do not wait any longer
            return
        stopped.set()
        err_console.print("stopping: finishing the messages in progress…")
        dispatcher.stop()
        loop.call_later(SHUTDOWN_GRACE, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    return stopped


async def _show_progress(
    engine: Engine, send_id: int, task: asyncio.Task[sends.SendCounts | None]
) -> None:
    columns = (
        TextColumn("[bold]send {task.fields[send]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "sent {task.fields[sent]} · failed {task.fields[failed]} · "
            "remaining {task.fields[remaining]} · {task.fields[rate]:.0f} msg/s"
        ),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task(
            "send", total=None, send=send_id, sent=0, failed=0, remaining=0, rate=0.0
        )
        started, first = time.monotonic(), None
        while True:
            counts = await asyncio.to_thread(_counts, engine, send_id)
            first = counts.sent if first is None else first
            rate = (counts.sent - first) / max(time.monotonic() - started, 1e-6)
            progress.update(
                bar,
                total=counts.total,
                completed=counts.sent + counts.failed,
                sent=counts.sent,
                failed=counts.failed,
                remaining=counts.pending,
                rate=rate,
            )
            if task.done():
                return
            await asyncio.wait([task], timeout=PROGRESS_EVERY)


def _counts(engine: Engine, send_id: int) -> sends.SendCounts:
    with transaction(engine) as session:
        return sends.counts(session, send_id)


async def preview(settings: Settings, column: ColumnRecord, address: str) -> str | None:
    """Mail one copy to `address`; None when accepted, else the relay's reason."""
    ctx = build_context(settings)
    prepared = await asyncio.to_thread(prepare_column, column_view(column), settings)
    data = prepared.message_bytes(
        to=address,
        name="",
        unsubscribe_url=f"{settings.base_url}/",
        feedback_url=ctx.feedback_url(),
        message_id=f"<preview.{secrets.token_hex(8)}@{settings.mail_domain}>",
    )
    with smtp_target(settings) as target:
        async with SmtpConnection(target) as conn:
            try:
                await conn.send(settings.mail_from, address, data)
            except SmtpFailure as failure:
                return failure.reason
    return None


def print_status(engine: Engine, limit: int, *, as_json: bool = False) -> None:
    with transaction(engine) as session:
        rows = sends.latest(session, limit)
    if as_json:
        out.print_json(json.dumps([_status_record(*row) for row in rows]))
        return
    if not rows:
        out.print("no sends yet")
        return
    table = Table(
        "send",
        "date",
        "column",
        "status",
        "readers",
        "sent",
        "failed",
        "skipped",
        "remaining",
        "started (UTC)",
        "finished (UTC)",
    )
    for send, column, counts in rows:
        table.add_row(
            str(send.id),
            column.date.isoformat(),
            column.title[:48],
            send.status,
            str(send.total),
            str(counts.sent),
            str(counts.failed),
            str(counts.skipped),
            str(counts.pending),
            _when(send.created_at),
            _when(send.finished_at),
        )
    out.print(table)
    for send, column, _counts in rows:
        if send.status == "paused":
            out.print(
                f"[bold red]send {send.id} is paused[/] since {_when(send.paused_at)} UTC: "
                f"{send.pause_reason}\n  fix the relay, then resume it with "
                f"`broadside send --date {column.date.isoformat()}`",
                soft_wrap=True,
            )


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _status_record(send: Send, column: ColumnRecord, counts: sends.SendCounts) -> dict[str, object]:
    return {
        "send": send.id,
        "date": column.date.isoformat(),
        "title": column.title,
        "status": send.status,
        "pause_reason": send.pause_reason,
        "readers": send.total,
        "sent": counts.sent,
        "failed": counts.failed,
        "skipped": counts.skipped,
        "remaining": counts.pending,
        "started_at": send.created_at.isoformat(),
        "finished_at": send.finished_at.isoformat() if send.finished_at else None,
    }


def import_columns(engine: Engine, settings: Settings, paths: list[Path]) -> int:
    """Import and report; returns how many files failed."""
    check = mail_size_check(settings)
    with transaction(engine) as session:
        outcomes, errors = sources.import_paths(session, paths, check=check)
    for outcome in outcomes:
        out.print(
            f"{outcome.action:>9}  {outcome.date.isoformat()}  {outcome.slug}  ({outcome.name})"
        )
    for error in errors:
        err_console.print(f"[bold red]error:[/] {error}", soft_wrap=True)
    return len(errors)

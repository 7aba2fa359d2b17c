"""What the CLI shows: a send's plan and live progress, the status table, import reports.
Rich output lives here so that the domain modules never print."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from .columns import sources
from .config import Settings
from .context import build_context
from .db import transaction
from .delivery import daily, sends
from .delivery.worker import SendWorker
from .mail.column import column_view, prepare_column
from .mail.smtp import SmtpConnection, SmtpFailure
from .models import ColumnRecord, Send, Subscriber, SubscriberStatus
from .runtime import smtp_target

out = Console(highlight=False)
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
        column = sends.column_for(session, day)
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


async def send_with_progress(engine: Engine, settings: Settings, p: Plan) -> sends.SendCounts:
    assert p.column is not None
    ctx = build_context(settings)
    with transaction(engine) as session:
        send, created = sends.start(session, column=p.column)
        send_id = send.id or 0
    out.print(f"{'starting' if created else 'resuming'} send {send_id}: [bold]{p.column.title}[/]")
    with smtp_target(settings) as target:
        task = asyncio.create_task(SendWorker(engine, ctx, target).run(send_id))
        await _show_progress(engine, send_id, task)
        counts = await task
    out.print(f"send {send_id}: {counts.sent} sent, {counts.failed} failed, {counts.pending} left")
    return counts


async def _show_progress(
    engine: Engine, send_id: int, task: asyncio.Task[sends.SendCounts]
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


def print_status(engine: Engine, limit: int) -> None:
    with transaction(engine) as session:
        rows = sends.latest(session, limit)
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
            str(counts.pending),
            send.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            send.finished_at.strftime("%Y-%m-%d %H:%M:%S") if send.finished_at else "",
        )
    out.print(table)


def import_columns(engine: Engine, paths: list[Path]) -> int:
    """Import and report; returns how many files failed."""
    with transaction(engine) as session:
        outcomes, errors = sources.import_paths(session, paths)
    for outcome in outcomes:
        out.print(
            f"{outcome.action:>9}  {outcome.date.isoformat()}  {outcome.slug}  ({outcome.name})"
        )
    for error in errors:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", soft_wrap=True, highlight=False)
    return len(errors)

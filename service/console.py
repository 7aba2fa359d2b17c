"""What the CLI shows: a send's plan and live progress, the status table, import reports.
Rich output lives here so that the domain modules never print."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy.engine import Engine

from . import subscriber_files
from .columns import sources
from .columns.mail import mail_size_check
from .config import Settings
from .context import AppContext
from .db import transaction
from .delivery import daily, sends
from .delivery.courier import Courier
from .mail.dkim import DnsRecord
from .readers import SubscriberStatus

out = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
PROGRESS_EVERY = 0.5  # seconds


def print_plan(p: daily.Plan) -> None:
    """What `broadside send --dry-run` shows."""
    out.print(f"[bold]{p.title}[/]  ({p.day.isoformat()}, /columns/{p.slug})")
    if p.send_id is not None:
        out.print(
            f"already sent or sending: send {p.send_id}, {p.send_readers} readers, {p.send_status}"
        )
    else:
        out.print(f"would go to {p.readers} active readers; nothing sent (--dry-run)")


async def send_with_progress(courier: Courier, day: dt.date) -> daily.SendOutcome:
    """Start (or resume, or un-pause) the day's send and deliver it here with a progress bar.
    SIGTERM or Ctrl-C stops it gracefully (a second one at once)."""
    run = daily.SendRun(courier, day)
    started = await run.start()
    if started.unpaused:
        out.print(f"un-pausing send {started.send_id} (paused: {started.unpaused})")
    verb = "starting" if started.created else "resuming"
    out.print(f"{verb} send {started.send_id}: [bold]{started.title}[/]")
    _stop_on_signals(run)
    with _ProgressBar(started.send_id) as bar:
        outcome = await run.deliver(bar.update, every=PROGRESS_EVERY)
    c = outcome.counts
    out.print(
        f"send {outcome.send_id}: {c.sent} sent, {c.failed} failed, "
        f"{c.skipped} skipped, {c.pending} left"
    )
    if outcome.waiting_until is not None:
        out.print(
            f"the {c.pending} left are due at SEND_TIME in their own time zones, the next at "
            f"{_when(outcome.waiting_until)} UTC: a running `broadside serve` or "
            "`broadside worker` delivers them then (or run this again then)"
        )
    return outcome


def _stop_on_signals(run: daily.SendRun) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        err_console.print("stopping: finishing the messages in progress…")
        run.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


class _ProgressBar:
    """A rich progress bar fed with a send's counts."""

    def __init__(self, send_id: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]send {task.fields[send]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "sent {task.fields[sent]} · failed {task.fields[failed]} · "
                "remaining {task.fields[remaining]} · {task.fields[rate]:.0f} msg/s"
            ),
            TimeRemainingColumn(),
            console=out,
            transient=False,
        )
        self.bar = self.progress.add_task(
            "send", total=None, send=send_id, sent=0, failed=0, remaining=0, rate=0.0
        )
        self.started = time.monotonic()
        self.first: int | None = None

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def update(self, counts: sends.SendCounts) -> None:
        self.first = counts.sent if self.first is None else self.first
        rate = (counts.sent - self.first) / max(time.monotonic() - self.started, 1e-6)
        self.progress.update(
            self.bar,
            total=counts.total,
            completed=counts.sent + counts.failed,
            sent=counts.sent,
            failed=counts.failed,
            remaining=counts.pending,
            rate=rate,
        )


def print_status(engine: Engine, limit: int, *, as_json: bool = False) -> None:
    """The latest sends as a table (or JSON), and why a paused one is paused."""
    with transaction(engine) as session:
        rows = sends.latest(session, limit)
        # How far each unfinished send has come around the world (local-time delivery).
        by_due = {
            row.id: sends.progress_by_due(session, row.id)
            for row in rows
            if row.status in ("sending", "paused")
        }
    if as_json:
        records = [_status_record(row) | _due_record(by_due.get(row.id)) for row in rows]
        out.print_json(json.dumps(records))
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
    for row in rows:
        table.add_row(
            str(row.id),
            row.date.isoformat(),
            row.title[:48],
            row.status,
            str(row.readers),
            str(row.counts.sent),
            str(row.counts.failed),
            str(row.counts.skipped),
            str(row.counts.pending),
            _when(row.started_at),
            _when(row.finished_at),
        )
    out.print(table)
    for send_id, groups in by_due.items():
        if len(groups) > 1:
            out.print(_due_table(send_id, groups))
    for row in rows:
        if row.status == "paused":
            out.print(
                f"[bold red]send {row.id} is paused[/] since {_when(row.paused_at)} UTC: "
                f"{row.pause_reason}\n  resume it with `broadside sends resume {row.id}` "
                "(if the relay refused us, fix the relay first)",
                soft_wrap=True,
            )


SHOWN_ZONES = 3  # zone names listed per due moment; the rest are counted


def _due_table(send_id: int, groups: list[sends.DueGroup]) -> Table:
    """One unfinished send's progress by due moment (the zones whose SEND_TIME it is)."""
    table = Table(
        "due (UTC)",
        "zones",
        "readers",
        "sent",
        "failed",
        "skipped",
        "waiting",
        title=f"send {send_id} by time zone",
    )
    for group in groups:
        names = ", ".join(group.zones[:SHOWN_ZONES])
        if len(group.zones) > SHOWN_ZONES:
            names += f" +{len(group.zones) - SHOWN_ZONES} more"
        c = group.counts
        table.add_row(
            _when(group.due_at),
            names,
            str(c.total),
            str(c.sent),
            str(c.failed),
            str(c.skipped),
            str(c.pending),
        )
    return table


def _due_record(groups: list[sends.DueGroup] | None) -> dict[str, object]:
    if groups is None:
        return {}
    return {
        "by_due": [
            {
                "due_at": group.due_at.isoformat() if group.due_at else None,
                "zones": list(group.zones),
                "readers": group.counts.total,
                "sent": group.counts.sent,
                "failed": group.counts.failed,
                "skipped": group.counts.skipped,
                "remaining": group.counts.pending,
            }
            for group in groups
        ]
    }


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _status_record(row: sends.SendSummary) -> dict[str, object]:
    return {
        "send": row.id,
        "kind": row.kind,
        "week": row.week,
        "date": row.date.isoformat(),
        "title": row.title,
        "status": row.status,
        "pause_reason": row.pause_reason,
        "deferred": row.deferred,
        "rate": row.rate,
        "cancelled_at": row.cancelled_at.isoformat() if row.cancelled_at else None,
        "readers": row.readers,
        "sent": row.counts.sent,
        "failed": row.counts.failed,
        "skipped": row.counts.skipped,
        "remaining": row.counts.pending,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
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


def print_dkim_setup(
    path: Path, domain: str, selector: str, kind: str, records: list[DnsRecord]
) -> None:
    """What `broadside dkim generate` shows: where the key is, what to publish, what to set."""
    out.print(f"private key written to {path} (mode 0600); keep it secret\n", soft_wrap=True)
    out.print("Publish these DNS records:\n")
    for record in records:
        out.print(f"; {record.why}", soft_wrap=True)
        out.print(record.zone_line, soft_wrap=True, markup=False)
        out.print()
    variable = "DKIM_PRIVATE_KEY_ED25519" if kind == "ed25519" else "DKIM_PRIVATE_KEY"
    selector_variable = "DKIM_SELECTOR_ED25519" if kind == "ed25519" else "DKIM_SELECTOR"
    out.print("Then set:", soft_wrap=True)
    for line in (
        f"BROADSIDE_DKIM_DOMAIN={domain}",
        f"BROADSIDE_{selector_variable}={selector}",
        f"BROADSIDE_{variable}={path}",
    ):
        out.print(line, markup=False, soft_wrap=True)
    if kind == "ed25519":
        out.print(
            "; sign with an RSA key as well (DKIM_PRIVATE_KEY, DKIM_SELECTOR): not every "
            "receiver checks Ed25519 yet",
            soft_wrap=True,
        )


def print_send(engine: Engine, send_id: int, *, as_json: bool = False) -> bool:
    """One send in detail (or JSON); False when there is no such send."""
    with transaction(engine) as session:
        row = sends.summary(session, send_id)
    if row is None:
        return False
    if as_json:
        out.print_json(json.dumps(_status_record(row)))
        return True
    table = Table(show_header=False, box=None)
    for label, value in (
        ("send", str(row.id)),
        ("column", f"{row.date.isoformat()}  {row.title}"),
        ("status", row.status + (f" ({row.pause_reason})" if row.pause_reason else "")),
        ("readers", str(row.readers)),
        ("sent", str(row.counts.sent)),
        ("deferred", str(row.deferred)),
        ("failed", str(row.counts.failed)),
        ("skipped", str(row.counts.skipped)),
        ("remaining", str(row.counts.pending)),
        ("rate", f"{row.rate:.1f} messages/s over the last minute"),
        ("started (UTC)", _when(row.started_at)),
        ("finished (UTC)", _when(row.finished_at)),
        ("cancelled (UTC)", _when(row.cancelled_at)),
    ):
        table.add_row(f"[bold]{label}[/]", value)
    out.print(table)
    return True


def change_send(engine: Engine, send_id: int, action: str) -> str:
    """Pause, resume or cancel a send; the send's status after it (LookupError for an
    unknown send, sends.SendStateError when the action does not apply)."""
    act = {"pause": sends.pause_by_operator, "resume": sends.resume_by_operator}.get(
        action, sends.cancel
    )
    with transaction(engine) as session:
        return str(act(session, send_id).status)


SHOWN_INVALID = 20  # invalid lines printed; the summary counts them all


def import_readers(
    engine: Engine,
    ctx: AppContext,
    path: Path,
    options: subscriber_files.ImportOptions,
    batch_size: int = subscriber_files.IMPORT_BATCH,
) -> subscriber_files.ImportSummary:
    """Import a CSV file of readers with a progress bar over the file's bytes, then print
    the summary. OSError or UnusableFile before anything is written."""
    started = time.monotonic()
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        listing = subscriber_files.read_csv(file)
        if listing.ignored_columns:
            ignored = ", ".join(repr(c) for c in listing.ignored_columns)
            err_console.print(
                f"[yellow]warning:[/] ignoring columns {escape(ignored)}", soft_wrap=True
            )
        with Progress(
            TextColumn("[bold]import"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]:,} rows"),
            TimeRemainingColumn(),
            console=out,
        ) as progress:
            task = progress.add_task("import", total=size, rows=0)

            def advance(rows: int) -> None:
                progress.update(task, completed=file.tell(), rows=rows)

            summary = subscriber_files.import_rows(
                engine, ctx, listing.rows, options, batch_size, advance
            )
            progress.update(task, completed=size if summary.stopped is None else file.tell())
    summary.ignored_columns = listing.ignored_columns
    print_import_summary(summary, time.monotonic() - started)
    return summary


def print_import_summary(summary: subscriber_files.ImportSummary, seconds: float) -> None:
    """Imported, updated, skipped (and why), invalid with the first lines named."""
    s = summary
    rate = s.rows / max(seconds, 1e-6)
    out.print(
        f"[bold]imported {s.imported:,}[/] · updated {s.updated:,} · skipped {s.skipped:,} · "
        f"invalid {s.invalid:,}  ({s.rows:,} rows in {seconds:.1f} s, {rate:,.0f} rows/s)",
        soft_wrap=True,
    )
    reasons = [
        (s.unchanged, "already on the list"),
        (s.repeated, "repeated in the file"),
        (s.suppressed, "on the suppression list"),
        (s.left, "unsubscribed, bounced, complained or erased"),
    ]
    if s.skipped:
        shown = ", ".join(f"{count:,} {why}" for count, why in reasons if count)
        out.print(f"skipped: {shown}", soft_wrap=True)
    if s.choices_kept:
        out.print(
            f"{s.choices_kept:,} readers already on the list kept their own time zone, cadence "
            "or digest weekday (the file's are used only for new readers)",
            soft_wrap=True,
        )
    if s.mailed:
        out.print(
            f"{s.mailed:,} confirmation mails queued: `broadside serve` or `broadside worker` "
            "sends them; these readers get the column once they confirm",
            soft_wrap=True,
        )
    for invalid in s.invalid_lines[:SHOWN_INVALID]:
        out.print(
            f"  line {invalid.line}: {invalid.value!r}: {invalid.reason}",
            markup=False,
            soft_wrap=True,
        )
    if s.invalid > SHOWN_INVALID:
        out.print(f"  … and {s.invalid - SHOWN_INVALID:,} more invalid lines")


def export_readers(
    engine: Engine,
    *,
    status: SubscriberStatus | None,
    fmt: subscriber_files.ExportFormat,
    output: Path | None,
) -> None:
    """Stream the export to stdout, or to `output` (written beside it and renamed into place
    at the end, so a failed export never leaves half a file under that name)."""
    chunks = subscriber_files.export_chunks(engine, status=status, fmt=fmt)
    if output is None:
        _to_stdout(chunks)
        return
    partial = output.with_name(f".{output.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as file:
            for chunk in chunks:
                file.write(chunk)
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    err_console.print(f"exported to {escape(str(output))}")


def _to_stdout(chunks: Iterator[str]) -> None:
    try:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk.encode("utf-8"))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's own flush at exit
        # from failing on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

"""The `broadside` command: thin Typer commands over the modules that do the work."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from . import logs
from .config import ConfigError, Settings, load_settings
from .db import make_engine
from .readers import SubscriberStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .delivery.courier import Courier

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Broadside: the daily World View column by e-mail.",
)
db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
app.add_typer(db_app, name="db")
err = Console(stderr=True, highlight=False)
T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line naming the problem and give the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def announce(settings: Settings, message: str) -> None:
    """A long-running command's status line: on the console, or a log line when the logs are
    JSON (a log shipper reads that stream line by line)."""
    if settings.log_format == "json":
        logging.getLogger(__name__).info(message)
    else:
        err.print(message, markup=False, soft_wrap=True)


def settings_or_exit() -> Settings:
    """The settings, or exit with one line naming the bad variable; sets up logging."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    logs.configure(settings)
    return settings


@contextmanager
def database_errors() -> Iterator[None]:
    """A database that is down or malformed is one line, not a traceback."""
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            raise fail(
                f"the database has no schema yet ({reason}): run `broadside db upgrade`"
            ) from None
        sqlstate = getattr(exc.orig, "sqlstate", None)  # PostgreSQL's; class 08: connection
        if sqlstate and not sqlstate.startswith("08"):  # reached, and refused the statement
            raise fail(f"database error ({sqlstate}): {reason}") from None
        raise fail(f"database unreachable: {reason}") from None
    except SQLAlchemyError as exc:
        raise fail(
            f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        ) from None


@contextmanager
def courier_for(settings: Settings, engine: Engine) -> Iterator[Courier]:
    """What a send or a preview from the command line needs (the relay, or the capture server)."""
    from .context import build_context
    from .delivery.courier import Courier
    from .mail.capture import smtp_target

    with smtp_target(settings) as target:
        yield Courier(engine, build_context(settings), target)


def guarded(func: Callable[[], T]) -> T:
    """Run `func`, turning a database failure into one line instead of a traceback."""
    with database_errors():
        return func()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Create or migrate the database schema (run by `make run`)."""
    from .migrate import upgrade

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    guarded(lambda: upgrade(engine, revision))
    err.print(f"database is at revision {revision}")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="interface to listen on [default: 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on [default: 8000]")] = None,
    fd: Annotated[
        int | None,
        typer.Option(
            help="serve on this inherited listening socket instead (systemd socket activation: 3)"
        ),
    ] = None,
    scheduler: Annotated[bool, typer.Option(help="run the daily send in this process")] = True,
) -> None:
    """Run the web server with the outbox sender and (by default) the daily scheduler."""
    import uvicorn

    from .runtime import freeze_start_up
    from .web import server
    from .web.app import create_app

    sockets = None
    if fd is not None:
        if host is not None or port is not None:
            raise fail("--fd serves on a socket that is already bound: leave out --host and --port")
        try:
            sockets = [server.inherited_socket(fd)]
        except ValueError as exc:
            raise fail(f"--fd: {exc}") from None
        host, port = sockets[0].getsockname()[:2]  # for the start-up line
    host, port = host or "127.0.0.1", 8000 if port is None else port
    settings = settings_or_exit()
    application = create_app(settings, scheduler=scheduler)
    announce(settings, f"Broadside on {server.url(host, port)}  (public URL {settings.base_url})")
    running = uvicorn.Server(server.config(settings, application, host, port))
    freeze_start_up()
    running.run(sockets=sockets)
    if not running.started:  # the port is taken or the start-up failed; uvicorn said why
        raise typer.Exit(3)


@app.command()
def worker() -> None:
    """Run the daily scheduler and the outbox sender without a web server."""
    from .context import build_context
    from .runtime import background, bounce_mailbox, bounce_receiver, freeze_start_up

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    ctx = build_context(settings)

    async def run() -> None:
        with contextlib.ExitStack() as receiving:
            if settings.bounce_smtp_port is not None:
                port = receiving.enter_context(bounce_receiver(engine, ctx))
                announce(settings, f"bounce receiver on {settings.bounce_smtp_host}:{port}")
            async with background(engine, ctx, scheduler=True), bounce_mailbox(engine, ctx):
                announce(
                    settings,
                    "worker running: daily send at "
                    f"{settings.send_time.strftime('%H:%M')} {settings.timezone}; Ctrl-C stops",
                )
                await until_stopped()

    freeze_start_up()
    try:
        guarded(lambda: asyncio.run(run()))
    except OSError as exc:  # the bounce receiver's port is taken
        raise fail(str(exc)) from None


async def until_stopped() -> None:
    """Wait for SIGTERM or Ctrl-C."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@app.command()
def bounces() -> None:
    """Receive bounces, complaints (ARF) and mailto: unsubscribes by SMTP on
    BOUNCE_SMTP_HOST:BOUNCE_SMTP_PORT (default 127.0.0.1:2526), until stopped."""
    from .context import build_context
    from .runtime import bounce_mailbox, bounce_receiver

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    ctx = build_context(settings)

    async def run() -> None:
        with bounce_receiver(engine, ctx) as port:
            if settings.bounce_imap_url is not None:
                every = settings.bounce_imap_interval
                announce(settings, f"reading the bounce mailbox every {every}")
            accepted = (
                f"{settings.bounce_local}[+token]@{settings.bounce_domain}, "
                f"unsubscribe+token@{settings.bounce_domain}"
                if settings.bounce_domain
                else settings.bounce_address
            )
            announce(
                settings,
                f"bounce receiver on {settings.bounce_smtp_host}:{port}, taking mail for "
                f"{accepted}; Ctrl-C stops",
            )
            async with bounce_mailbox(engine, ctx):
                await until_stopped()

    try:
        guarded(lambda: asyncio.run(run()))
    except OSError as exc:  # the port is taken
        raise fail(str(exc)) from None


def _day(value: str | None, settings: Settings) -> dt.date:
    from .clock import now
    from .delivery.daily import local_day

    if value is None:
        return local_day(settings, now())
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise fail(f"--date: {value!r} is not a date in the form YYYY-MM-DD") from None


DateOption = Annotated[
    str | None, typer.Option("--date", help="YYYY-MM-DD (default: today in TIMEZONE)")
]


@app.command()
def send(
    date: DateOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show what would be sent; send nothing")
    ] = False,
) -> None:
    """Send a day's column to every active reader now, in the foreground, with progress."""
    from . import console
    from .delivery import daily
    from .delivery.sends import PAUSED_BY_OPERATOR
    from .delivery.worker import LeaseLost

    settings = settings_or_exit()
    day = _day(date, settings)
    engine = make_engine(settings.database_url)
    with database_errors():
        plan = daily.plan(engine, settings, day)
        if plan.title is None:
            raise fail(
                f"no column for {day.isoformat()}: put one in {settings.columns_dir} "
                "or POST it to /api/v1/admin/columns",
                1,
            )
        if dry_run:
            console.print_plan(plan)
            return
        try:
            with courier_for(settings, engine) as courier:
                outcome = asyncio.run(console.send_with_progress(courier, day))
        except daily.ColumnNotSendable as exc:
            raise fail(str(exc), 1) from None
        except LeaseLost as exc:
            raise fail(f"the database stopped answering mid-send ({exc}); run again", 1) from None
    again = f"`broadside send --date {day.isoformat()}`"
    if outcome.cancelled:
        raise fail(
            f"send {outcome.send_id} was cancelled by the operator; nothing more goes out", 1
        )
    if outcome.paused == PAUSED_BY_OPERATOR:
        raise fail(f"send {outcome.send_id} was paused by the operator; run {again} to resume", 1)
    if outcome.paused:
        raise fail(
            f"send {outcome.send_id} paused: {outcome.paused}. No reader was changed; "
            f"fix the relay, then run {again} to resume",
            1,
        )
    if not outcome.counts.done and outcome.waiting_until is None:
        raise fail(
            f"send {outcome.send_id} stopped with {outcome.counts.pending} left; "
            f"run {again} to finish it",
            1,
        )


@app.command()
def preview(
    to: Annotated[str, typer.Option("--to", help="address that gets the test copy")],
    date: DateOption = None,
    digest: Annotated[
        bool, typer.Option("--digest", help="the weekly digest of --week instead of a column")
    ] = False,
    week: Annotated[
        str | None,
        typer.Option(
            "--week",
            help="the digest's ISO week, e.g. 2026-W48 (default: this week); implies --digest",
        ),
    ] = None,
) -> None:
    """Mail one test copy of a day's column, or of a week's digest, to ADDRESS, touching no
    subscriber. The digest's copy holds the columns dated in that ISO week (Monday to Sunday),
    without any reader's history: a reader's own digest leaves out the columns they were
    already mailed and may reach into the week before."""
    from .delivery import daily
    from .errors import InvalidInput
    from .subscriptions import normalize_address

    settings = settings_or_exit()
    try:
        address = normalize_address(to)
    except InvalidInput as exc:
        raise fail(f"--to: {exc.message}") from None
    if digest or week is not None:
        if date is not None:
            raise fail("--date picks a day's column; a digest takes --week (e.g. 2026-W48)")
        _preview_digest(settings, address, _week(week, settings))
        return
    day = _day(date, settings)
    engine = make_engine(settings.database_url)
    with database_errors():
        plan = daily.plan(engine, settings, day)
        if plan.title is None:
            raise fail(f"no column for {day.isoformat()}", 1)
        with courier_for(settings, engine) as courier:
            problem = asyncio.run(daily.preview(courier, day, address))
    if problem:
        raise fail(f"the preview was not accepted: {problem}", 1)
    err.print(f"preview of {plan.title!r} sent to {address}")


def _preview_digest(settings: Settings, address: str, week: str) -> None:
    """`preview --digest`: refresh the columns, then mail `week`'s digest to `address`."""
    from .delivery import daily, digests

    engine = make_engine(settings.database_url)
    with database_errors():
        daily.refresh_columns(engine, settings)
        try:
            columns = daily.digest_columns(engine, week)
        except digests.NoDigest as exc:
            raise fail(str(exc), 1) from None
        with courier_for(settings, engine) as courier:
            problem = asyncio.run(daily.send_digest_test_copy(courier, week, columns, address))
    if problem:
        raise fail(f"the preview was not accepted: {problem}", 1)
    count = f"{len(columns)} column{'s' if len(columns) > 1 else ''}"
    err.print(f"preview of the digest of {week} ({count}) sent to {address}")


def _week(value: str | None, settings: Settings) -> str:
    """--week as a digest send names it; this week if none (daily.current_week)."""
    from .clock import now
    from .delivery import daily, digests

    if value is None:
        return daily.current_week(settings, now())
    try:
        return digests.week_named(value)
    except ValueError as exc:
        raise fail(f"--week: {exc}") from None


@app.command()
def status(
    limit: Annotated[int, typer.Option(help="how many sends to show")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """The latest sends with their counts, and why a paused send is paused."""
    from . import console

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    guarded(lambda: console.print_status(engine, limit, as_json=as_json))


columns_app = typer.Typer(no_args_is_help=True, help="Columns: import and list.")
app.add_typer(columns_app, name="columns")


@columns_app.command("import")
def columns_import(
    paths: Annotated[list[Path], typer.Argument(help="column files or folders")],
) -> None:
    """Import World View text (.txt) or Markdown (.md) columns; re-importing is harmless."""
    from . import console

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    failures = guarded(lambda: console.import_columns(engine, settings, paths))
    raise typer.Exit(1 if failures else 0)


subscribers_app = typer.Typer(no_args_is_help=True, help="Readers: import a list, export it.")
app.add_typer(subscribers_app, name="subscribers")


@subscribers_app.command("import")
def subscribers_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="UTF-8 CSV with a header row: email; optional name, status, timezone, "
            "cadence, digest_weekday"
        ),
    ],
    confirmed: Annotated[
        bool,
        typer.Option(
            "--confirmed",
            help="import as active readers, without a confirmation mail (needs --consent-source)",
        ),
    ] = False,
    consent_source: Annotated[
        str | None,
        typer.Option(
            "--consent-source",
            help="where these people agreed to get the column (each consent record keeps it)",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, max=5000, help="rows per transaction")
    ] = None,
) -> None:
    """Import readers from a CSV file: new ones pending with a confirmation mail (or active
    with --confirmed); suppressed addresses and readers who left are never brought back."""
    from . import console
    from .context import build_context
    from .errors import InvalidInput
    from .subscriber_files import IMPORT_BATCH, UnusableFile, import_options

    if confirmed and not consent_source:
        raise fail("--confirmed needs --consent-source TEXT: where these people agreed")
    try:
        options = import_options(
            confirmed=confirmed, consent_source=consent_source, file_name=file.name
        )
    except InvalidInput as exc:
        raise fail(f"--consent-source: {exc.message}") from None
    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    ctx = build_context(settings)
    try:
        summary = guarded(
            lambda: console.import_readers(engine, ctx, file, options, batch_size or IMPORT_BATCH)
        )
    except OSError as exc:
        raise fail(f"{file}: {exc.strerror or exc}", 1) from None
    except UnusableFile as exc:
        raise fail(f"{file}: {exc}; nothing was imported", 1) from None
    except KeyboardInterrupt:  # the batch being written finished first: whole batches only
        raise fail(
            "interrupted; the batches imported so far are kept: run the same import again "
            "to finish (rows already in are left as they are)",
            130,
        ) from None
    if summary.stopped is not None:
        raise fail(
            f"{file}: {summary.stopped}; the rows before it were imported, "
            "fix it and run the import again (rows already in are left as they are)",
            1,
        )


@subscribers_app.command("export")
def subscribers_export(
    status: Annotated[
        SubscriberStatus | None, typer.Option("--status", help="only readers in this status")
    ] = None,
    fmt: Annotated[
        Literal["csv", "json"], typer.Option("--format", help="CSV, or one JSON array")
    ] = "csv",
    output: Annotated[
        Path | None, typer.Option("--output", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Export readers (erased ones excepted) as CSV or JSON, streamed in constant memory."""
    from . import console
    from .subscriber_files import ExportFormat

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    try:
        guarded(
            lambda: console.export_readers(
                engine, status=status, fmt=ExportFormat(fmt), output=output
            )
        )
    except OSError as exc:
        raise fail(f"{output}: {exc.strerror or exc}", 1) from None


admin_app = typer.Typer(no_args_is_help=True, help="The dashboard's sign-in.")
app.add_typer(admin_app, name="admin")


@admin_app.command("hash-password")
def admin_hash_password() -> None:
    """Ask for a dashboard password twice and print its argon2 hash, for ADMIN_PASSWORD."""
    from .operators import MIN_PASSWORD, hash_password

    # The prompts go to stderr, so that stdout is the hash alone: VAR=$(broadside admin …).
    given = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if len(given) < MIN_PASSWORD:
        raise fail(f"the password must be at least {MIN_PASSWORD} characters")
    typer.echo(hash_password(given))


dkim_app = typer.Typer(no_args_is_help=True, help="DKIM keys and the DNS records they need.")
app.add_typer(dkim_app, name="dkim")


@dkim_app.command("generate")
def dkim_generate(
    domain: Annotated[str, typer.Option(help="the signing domain (d=), e.g. example.com")],
    selector: Annotated[str, typer.Option(help="the key's name in DNS (s=), e.g. 2026")],
    ed25519: Annotated[bool, typer.Option("--ed25519", help="an Ed25519 key (RFC 8463)")] = False,
    out: Annotated[
        Path | None, typer.Option(help="where to write the private key (default: VAR_DIR/dkim/)")
    ] = None,
) -> None:
    """Write a new DKIM key pair (mode 0600) and print the DNS records to publish."""
    from . import console
    from .config import DNS_NAME_RE
    from .mail import dkim

    settings = settings_or_exit()
    for option, value in (("--domain", domain), ("--selector", selector)):
        if not DNS_NAME_RE.fullmatch(value):
            raise fail(f"{option}: {value!r} is not a DNS name")
    kind = "ed25519" if ed25519 else "rsa"
    path = out or settings.var_dir / "dkim" / f"{selector}._domainkey.{domain}.{kind}.pem"
    key = dkim.new_key(kind)
    try:
        dkim.write_key(key, path)
    except FileExistsError:
        raise fail(f"{path} exists already: choose another --selector or --out") from None
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}") from None
    console.print_dkim_setup(path, domain, selector, kind, dkim.dns_records(domain, selector, key))


sends_app = typer.Typer(no_args_is_help=True, help="Sends: list, show, pause, resume, cancel.")
app.add_typer(sends_app, name="sends")


@sends_app.command("list")
def sends_list(
    limit: Annotated[int, typer.Option(help="how many sends to show")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """The latest sends with their counts (as `broadside status`)."""
    status(limit=limit, as_json=as_json)


@sends_app.command("show")
def sends_show(
    send_id: Annotated[int, typer.Argument(help="the send's id (see `broadside sends list`)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """One send: counts by state, rate, times, and why it is paused."""
    from . import console

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    if not guarded(lambda: console.print_send(engine, send_id, as_json=as_json)):
        raise fail(f"no send {send_id}")


def _change_send(send_id: int, action: str, done: str) -> None:
    from . import console
    from .delivery.sends import SendStateError

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    try:
        status_now = guarded(lambda: console.change_send(engine, send_id, action))
    except LookupError:
        raise fail(f"no send {send_id}") from None
    except SendStateError as exc:
        raise fail(str(exc)) from None
    err.print(f"send {send_id} {done}; it is {status_now} now")


@sends_app.command("pause")
def sends_pause(send_id: Annotated[int, typer.Argument(help="the send's id")]) -> None:
    """Pause a running send: hand-offs in progress finish, nothing more goes out."""
    _change_send(send_id, "pause", "paused")


@sends_app.command("resume")
def sends_resume(send_id: Annotated[int, typer.Argument(help="the send's id")]) -> None:
    """Resume a paused send; running `serve`/`worker` processes pick it up within
    RESUME_INTERVAL (or run `broadside send --date D` to deliver it in the foreground)."""
    _change_send(send_id, "resume", "resumed")


@sends_app.command("cancel")
def sends_cancel(
    send_id: Annotated[int, typer.Argument(help="the send's id")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Cancel a send for good: readers not yet handed the column never get it."""
    if not yes and not typer.confirm(f"Cancel send {send_id} for good?", err=True):
        raise typer.Exit(1)
    _change_send(send_id, "cancel", "cancelled")


def main() -> None:
    """The `broadside` console script."""
    app()


if __name__ == "__main__":
    main()

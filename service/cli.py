"""The `broadside` command: thin Typer commands over the modules that do the work."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .config import ConfigError, Settings, load_settings
from .db import make_engine

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


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


@contextmanager
def database_errors() -> Iterator[None]:
    """A database that is down or malformed is one line, not a traceback."""
    try:
        yield
    except OperationalError as exc:
        raise fail(
            f"database unreachable: {str(exc.orig).splitlines()[0] if exc.orig else exc}"
        ) from None
    except SQLAlchemyError as exc:
        raise fail(
            f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        ) from None


def guarded(func: Callable[[], T]) -> T:
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
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    scheduler: Annotated[bool, typer.Option(help="run the daily send in this process")] = True,
) -> None:
    """Run the web server with the outbox sender and (by default) the daily scheduler."""
    import uvicorn

    from .web.app import create_app

    settings = settings_or_exit()
    application = create_app(settings, scheduler=scheduler)
    err.print(f"Broadside on http://{host}:{port}  (public URL {settings.base_url})")
    uvicorn.run(
        application, host=host, port=port, log_level=settings.log_level.lower(), proxy_headers=True
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()

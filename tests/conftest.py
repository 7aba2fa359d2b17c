"""Fixtures: a real database (SQLite, and PostgreSQL when configured), a real SMTP server,
settings pointing at both, a client for the app, and a clock the test moves."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError

from service import clock as service_clock
from service.config import Settings, load_settings
from service.db import make_engine
from service.migrate import upgrade
from tests.smtp_server import SmtpTestServer

# The developer's own BROADSIDE_* variables must not leak into the tests' settings.
for _name in list(os.environ):
    if _name.startswith("BROADSIDE_") and _name != "BROADSIDE_TEST_DATABASE_URL":
        del os.environ[_name]

PG_URL = os.environ.get("BROADSIDE_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
TABLES = [
    "admin_sessions",
    "bounces",
    "suppressions",
    "deliveries",
    "sends",
    "columns",
    "feedback",
    "consents",
    "outbox",
    "rate_buckets",
    "subscribers",
]
ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "seeds" / "world-view-2016-02-04.txt"


def _alone(item: pytest.Item) -> bool:
    """Marked `exclusive` (it restarts the PostgreSQL server), and on PostgreSQL: its SQLite
    run skips, so it need not wait for anyone."""
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("database_url") if callspec is not None else None
    return item.get_closest_marker("exclusive") is not None and backend != "sqlite"


@contextlib.contextmanager
def _taking_turns(folder: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock across the workers of one run: every test holds the room shared,
    a test that must be alone holds it exclusively. The turnstile keeps new tests out while
    one waits to be alone, so that it gets its turn as soon as the tests in progress end."""
    with (
        (folder / "turnstile.lock").open("a") as turnstile,
        (folder / "room.lock").open("a") as room,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(room, fcntl.LOCK_EX)
        else:
            fcntl.flock(room, fcntl.LOCK_SH)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield  # closing the files lets go of both


TURNS = pytest.StashKey[Path | None]()


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what does not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, with an `exclusive` test among those to run: the folder of the
    locks by which the workers take turns (the run's temporary folder, which holds each
    worker's own: popen-gw0, popen-gw1…). Otherwise no lock is taken at all."""
    workerinput = getattr(config, "workerinput", None)
    folder = None
    if workerinput is not None and any(_alone(item) for item in items):
        if config.option.basetemp:
            folder = Path(config.option.basetemp).parent
        else:  # not a local worker: a folder of this run's own
            folder = Path(tempfile.gettempdir()) / f"broadside-{workerinput['testrunuid']}"
            folder.mkdir(exist_ok=True)
    config.stash[TURNS] = folder


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """An `exclusive` test runs while no other worker runs anything, from the set-up of its
    fixtures (a session's database is created in its first test's) to their tear-down."""
    folder = item.config.stash.get(TURNS, None)
    if folder is None:
        return (yield)
    with _taking_turns(folder, _alone(item)):
        return (yield)


def _postgres_database(base_url: str) -> tuple[str, Engine]:
    """A fresh database on the server of `base_url`, for this run only."""
    admin = create_engine(  # pre-ping: the fault suite restarts the server mid-run
        make_url(base_url).set(drivername="postgresql+psycopg"),
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
    )
    name = f"broadside_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as conn:  # fails loudly when PostgreSQL is unreachable
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False), admin


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'broadside.db'}"
        admin = None
    else:
        assert PG_URL
        url, admin = _postgres_database(PG_URL)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def shared_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


# The sequences of TABLES' columns (serial ids) back at their start, as TRUNCATE's RESTART
# IDENTITY leaves them.
RESTART_SEQUENCES = text(
    "SELECT setval(s.seqrelid, s.seqstart, false) FROM pg_sequence s"
    " JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid"
    " WHERE d.deptype IN ('a', 'i') AND d.refobjid = ANY(CAST(:tables AS regclass[]))"
).bindparams(tables=TABLES)


def _empty_postgresql(engine: Engine) -> None:
    """What `TRUNCATE TABLES RESTART IDENTITY CASCADE` does, at a fraction of its cost: a
    TRUNCATE gives every table and index a new file (about 80 ms for these tables, after each
    of several hundred tests), a DELETE of the few rows a test leaves takes a millisecond or
    two. Should a table outside TABLES hold rows that refer to them, the DELETE fails on the
    foreign key and the TRUNCATE, which empties that table too, runs instead."""
    try:
        with engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(RESTART_SEQUENCES)
    except IntegrityError:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def engine(shared_engine: Engine) -> Iterator[Engine]:
    """The test database, emptied after each test."""
    yield shared_engine
    if shared_engine.dialect.name == "postgresql":
        _empty_postgresql(shared_engine)
        return
    with shared_engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    server = SmtpTestServer()
    server.start()
    yield server
    server.stop()


def make_settings(database_url: str, var_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "_env_file": None,
        "database_url": database_url,
        "var_dir": var_dir,
        "secret_key": "test-secret-key-that-is-long-enough",
        "base_url": "https://news.example.com",
        "from_address": "worldview@news.example.com",
        "from_name": "World View",
        "envelope_from": "bounces@news.example.com",
        "retry_initial_seconds": 0.2,
        "retry_max_seconds": 1.0,
        "outbox_poll_seconds": 0.1,
        "capture_port": 0,
        "columns_dir": ROOT / "seeds",
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path, smtp_server: SmtpTestServer) -> Settings:
    return make_settings(database_url, tmp_path / "var", smtp_url=smtp_server.url)


@pytest.fixture
def make_client(
    database_url: str, engine: Engine, tmp_path: Path, smtp_server: SmtpTestServer
) -> Iterator[Callable[..., TestClient]]:
    """A factory of app clients with settings overrides (admin token, feedback address…)."""
    with ExitStack() as stack:

        def make(**overrides: object) -> TestClient:
            from service.web.app import create_app

            settings = make_settings(
                database_url, tmp_path / "var", smtp_url=smtp_server.url, **overrides
            )
            return stack.enter_context(TestClient(create_app(settings, engine, scheduler=False)))

        yield make


@pytest.fixture
def app_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The app with its lifespan (outbox sender running) against the test SMTP server."""
    from service.web.app import create_app

    with TestClient(
        create_app(settings, engine, scheduler=False), base_url="https://news.example.com"
    ) as client:
        yield client


class Clock:
    """Time that moves only when the test moves it; what the service's `now=` parameters and
    scheduler `clock=` callables take instead of the wall clock."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        """Aware UTC, like service.clock.now (schedules, "what day is it")."""
        return self._now

    def utcnow(self) -> datetime:
        """Naive UTC, like service.clock.utcnow (what the database stores)."""
        return self._now.replace(tzinfo=None)

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now


@pytest.fixture
def clock() -> Clock:
    """Starts at the real now, so rows the service stamps itself stay comparable, and stands
    still until advanced."""
    return Clock(service_clock.now())

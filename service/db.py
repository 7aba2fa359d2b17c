"""Engine and session factory (and running one transaction off the event loop); SQLite pragmas."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Table, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import Session, create_engine

# How long a SQLite writer waits for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 10.0
# Each SQLite connection's own page cache, in KiB (SQLite's default is 2,000). A worker keeps
# about seven connections in its pool, and over a large send each filled its 2 MB: the worker
# grew by 14 MB during a 100,000-reader send (docs/BENCHMARKS.md). The operating system caches
# the file anyway; at 512 KiB the send path's rate moved less than its run-to-run spread.
SQLITE_CACHE_KIB = 512
# The most requests GroupCommit puts in one transaction.
GROUP_COMMIT_LIMIT = 64


def make_engine(url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT, **kwargs: Any) -> Engine:
    """An engine for SQLite (WAL, foreign keys, `busy_timeout` seconds of waiting for the
    write lock) or PostgreSQL (psycopg 3; `busy_timeout` does not apply)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout}, **kwargs
        )
        _sqlite_pragmas(engine, busy_timeout)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    return create_engine(url, **kwargs)


def _sqlite_pragmas(engine: Engine, busy_timeout: float) -> None:
    # Python's sqlite3 opens transactions lazily and upgrades read locks to write locks,
    # which fails at once (no busy wait) when another writer got there first. Taking the
    # write lock up front with BEGIN IMMEDIATE lets busy_timeout queue writers instead.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        writer.acquire(conn.connection.dbapi_connection)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release(conn.connection.dbapi_connection)
            raise

    writer = _WriterLock(busy_timeout)
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_conn: Any) -> None:
        try:
            commit(dbapi_conn)
        finally:
            writer.release(dbapi_conn)

    def do_rollback(dbapi_conn: Any) -> None:
        try:
            rollback(dbapi_conn)
        finally:
            writer.release(dbapi_conn)

    # Per engine: create_engine gives each engine its own dialect object.
    dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign,assignment]


class _WriterLock:
    """The threads of one process take SQLite's write lock in turn, queued on a lock of their
    own: SQLite's busy handler makes a waiting writer sleep 1, 2, 5 … 100 ms between tries,
    so under load the lock sits free while every writer sleeps (seconds of p99, then
    "database is locked"). Held from BEGIN IMMEDIATE until COMMIT or ROLLBACK has run;
    other processes still wait through busy_timeout."""

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout
        self._holder: Any = None  # the DBAPI connection whose transaction holds it

    def acquire(self, dbapi_conn: Any) -> None:
        # After the timeout, go on without it: SQLite's own lock still decides (a thread
        # that opens a second transaction while holding one must not wait here forever).
        if self._lock.acquire(timeout=self._timeout):
            self._holder = dbapi_conn

    def release(self, dbapi_conn: Any) -> None:
        dbapi_conn = getattr(dbapi_conn, "dbapi_connection", dbapi_conn)  # the pool's proxy
        if self._holder is not None and self._holder is dbapi_conn:
            self._holder = None
            self._lock.release()


def insert_new(session: Session, table: Table, rows: list[dict[str, Any]], *, key: str) -> None:
    """Insert `rows`, skipping those whose unique `key` is taken (by another row or another
    transaction): ON CONFLICT DO NOTHING, in SQLite's and PostgreSQL's words."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    session.connection().execute(insert(table).on_conflict_do_nothing(index_elements=[key]), rows)


def driver_run(
    session: Session, statements: Sequence[tuple[str, Mapping[str, object]]]
) -> list[list[Any]]:
    """Each statement's rows (none for a statement that returns none), run in the session's
    transaction through the driver's own cursor, in the driver's parameter style (sqlite3
    :name, psycopg %(name)s). On PostgreSQL they go in one pipeline: one round trip for all,
    and for the BEGIN before them when they open the transaction. For the few statements of
    a hot path whose SQLAlchemy compiling, typing and result layers cost more than the
    statement (docs/BENCHMARKS.md, G6). A driver error is raised as SQLAlchemy's would have
    been: a database gone mid-request is answered 503 by the web layer (its
    OperationalError), never 500."""
    connection = session.connection()
    dbapi = connection.dialect.loaded_dbapi
    try:
        return _driver_run(connection, statements)
    except dbapi.Error as exc:
        gone = connection.dialect.is_disconnect(exc, connection.connection, None)
        if gone:
            connection.invalidate(exc)
        sql, values = statements[0] if statements else ("", {})
        raise DBAPIError.instance(
            sql, values, exc, dbapi.Error, connection_invalidated=gone, dialect=connection.dialect
        ) from exc


def run_with_batch(
    session: Session,
    statements: Sequence[tuple[str, Mapping[str, object]]],
    then: Callable[[list[list[Any]]], None],
) -> None:
    """driver_run(statements), then `then(their rows)`, which may raise or go on in the same
    transaction. In a GroupCommit batch both wait for the batch's other jobs: the statements
    of all its jobs go in one pipeline before the COMMIT (on PostgreSQL one round trip for the
    batch, where each job's would have cost one) and each job's `then` runs after it, in job
    order. A `then` that raises there sends the batch round again, each job in a savepoint of
    its own, where nothing waits."""
    waiting = session.info.get(_WAITING)
    if waiting is None:
        then(driver_run(session, statements))
    else:
        waiting.append((statements, then))


def _run_waiting(session: Session) -> None:
    """The statements that run_with_batch left for the end of the batch, and their `then`s."""
    waiting = session.info.pop(_WAITING, None)
    if not waiting:
        return
    rows = driver_run(session, [statement for statements, _ in waiting for statement in statements])
    for statements, then in waiting:
        then(rows[: len(statements)])
        del rows[: len(statements)]


def driver_statement(
    session: Session, statement: ClauseElement, columns: tuple[str, ...] | None = None
) -> tuple[str, dict[str, Any]]:
    """A Core statement as driver_run runs it: its SQL in the driver's own named parameter
    style and the values it holds itself (the caller's go over them); an INSERT without
    values of its own names its `columns`. Compiled once per statement, columns and
    database."""
    dialect = session.get_bind().dialect
    key = (statement, columns, dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        named = _SQLITE_NAMED if dialect.name == "sqlite" else dialect
        compiled = statement.compile(
            dialect=named, column_keys=list(columns) if columns is not None else None
        )
        # SQLAlchemy fills a column's Python-side default at execution, which the driver
        # never sees: it would store NULL. Every such column must be given.
        defaults = [c.key for c in getattr(compiled, "insert_prefetch", ())]
        if missing := [k for k in defaults if k not in (columns or ())]:
            raise ValueError(f"give {', '.join(missing)}: their defaults are SQLAlchemy's")
        found = _COMPILED[key] = (str(compiled), dict(compiled.params))
    return found


_COMPILED: dict[tuple[ClauseElement, tuple[str, ...] | None, str], tuple[str, dict[str, Any]]] = {}
_SQLITE_NAMED = SQLiteDialect_pysqlite(paramstyle="named")
# How SQLAlchemy's DateTime stores a moment in SQLite (limits' SQL reads it by position).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def _sqlite_values(values: Mapping[str, object]) -> Mapping[str, object]:
    """Moments as SQLAlchemy's DateTime stores them in SQLite (sqlite3's own adapter drops
    the fraction of a whole second, and Python 3.12 deprecates it)."""
    if not any(isinstance(v, datetime) for v in values.values()):
        return values
    return {
        k: v.strftime(SQLITE_DATETIME) if isinstance(v, datetime) else v for k, v in values.items()
    }


def _driver_run(
    connection: Connection, statements: Sequence[tuple[str, Mapping[str, object]]]
) -> list[list[Any]]:
    raw = connection.connection.driver_connection
    assert raw is not None  # the session's connection is checked out, so it has one
    if connection.dialect.name == "postgresql" and _pipelines():
        with raw.pipeline():
            cursors = [raw.cursor() for _ in statements]
            for cursor, (sql, values) in zip(cursors, statements, strict=True):
                cursor.execute(sql, values)
        return [_rows(cursor) for cursor in cursors]
    results = []
    for sql, values in statements:
        cursor = raw.cursor()
        cursor.execute(sql, _sqlite_values(values))
        results.append(_rows(cursor))
        cursor.close()
    return results


def _rows(cursor: Any) -> list[Any]:
    return [] if cursor.description is None else list(cursor.fetchall())


def _pipelines() -> bool:
    """Whether psycopg's libpq can pipeline (14 and newer; imported only on PostgreSQL)."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def ping(engine: Engine) -> None:
    """Ask the database for nothing, to learn whether it answers (raises if it does not)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit at the end, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def in_thread(
    engine: Engine, work: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs
) -> R:
    """Run `work(session, …)` as one transaction in a worker thread, off the event loop."""

    def run() -> R:
        with transaction(engine) as session:
            return work(session, *args, **kwargs)

    return await asyncio.to_thread(run)


@dataclass
class _Job:
    work: Callable[[Session], Any]
    future: asyncio.Future[Any]
    outcome: Any = None
    failure: BaseException | None = None


class GroupCommit:
    """Runs `work(session, …)` of many requests in one transaction and one COMMIT: a job that
    raises (an invalid address, a rate limit) undoes only its own statements and gets its
    own exception, the others' work is committed. A job's work may therefore run more than
    once, but only one run is ever committed: it must do nothing but database work through
    its session. A job's caller hears back only after the COMMIT that made its work durable.

    While one batch is in the database, the jobs that arrive wait and go together in the
    next, all in one thread. On SQLite, which has one writer anyway, the write lock no longer
    passes from thread to thread for each request, each hand-over waiting for the
    interpreter lock while the event loop parses the next requests; on PostgreSQL one COMMIT
    (one WAL flush) serves many requests, and the rate-limit row every request from one
    client updates is locked by one transaction at a time instead of each request's in turn
    (docs/BENCHMARKS.md, G6: 1,060 against 840 requests/s on SQLite, 640 against 490 on
    PostgreSQL; two threads each with its batch measured slower on PostgreSQL, 480). Jobs can
    leave their statements for the end of the batch (run_with_batch): on PostgreSQL a batch
    is then one round trip for its statements, and its connection is kept for the next
    batch of a burst."""

    def __init__(self, engine: Engine, *, batch_limit: int = GROUP_COMMIT_LIMIT) -> None:
        self.engine = engine
        self.batch_limit = batch_limit
        self._waiting: list[_Job] = []
        self._drain: asyncio.Task[None] | None = None
        # Savepoints cost a sixth of a batch's time. A batch goes without them until one of
        # its jobs raises; then it is done again with one per job, and so are the batches
        # after it until one has no job that raises.
        self._careful = False
        # The connection the batches of a burst share: each checkout would ping the database
        # first (pool_pre_ping), a round trip per batch. Let go when the burst is over or a
        # batch failed, so a connection that broke is never kept.
        self._held: Connection | None = None

    async def run(
        self, work: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """`work(session, *args, **kwargs)` committed with the other jobs of its batch."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()

        def bound(session: Session) -> R:
            return work(session, *args, **kwargs)

        self._waiting.append(_Job(bound, future))
        if self._drain is None:
            self._drain = asyncio.create_task(self._batches())
        return await future

    async def _batches(self) -> None:
        jobs: list[_Job] = []
        try:
            while self._waiting:
                jobs = self._waiting[: self.batch_limit]
                del self._waiting[: self.batch_limit]
                try:
                    await asyncio.to_thread(self._commit, jobs)
                except Exception as exc:  # not the jobs' own failures: those are in each job
                    for job in jobs:
                        job.failure = job.failure or exc
                for job in jobs:
                    if job.future.done():  # its request went away; the work stands
                        continue
                    if job.failure is not None:
                        job.future.set_exception(job.failure)
                    else:
                        job.future.set_result(job.outcome)
        except asyncio.CancelledError:  # the loop is closing: nobody waits forever
            for job in [*jobs, *self._waiting]:
                job.future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._drain = None

    def _commit(self, jobs: list[_Job]) -> None:
        try:
            self._commit_batch(jobs)
        finally:
            if not self._waiting:  # the burst is over: its connection goes back to the pool
                self._let_go()

    def _commit_batch(self, jobs: list[_Job]) -> None:
        try:
            if not self._careful:
                try:
                    self._attempt(jobs, savepoints=False)
                    return
                except _NotBegun:
                    raise
                except Exception:  # a job raised (or the COMMIT): done again, job by job
                    self._careful = True
            self._attempt(jobs, savepoints=True)
            self._careful = any(job.failure is not None for job in jobs)
        except _NotBegun as exc:  # locked past the busy timeout, or down: everyone hears it
            raise exc.error from None
        except Exception:
            if len(jobs) == 1:
                raise
            # The batch failed as a whole (its COMMIT on a full disk, a statement that broke
            # the transaction rather than its savepoint): each job alone, so that only the
            # ones that fail by themselves hear of it.
            for job in jobs:
                job.outcome, job.failure = None, None
                try:
                    with transaction(self.engine) as session:
                        job.outcome = job.work(session)
                except Exception as exc:
                    job.failure = exc

    def _let_go(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def _attempt(self, jobs: list[_Job], *, savepoints: bool) -> None:
        """The jobs in one transaction on the held connection (on a fresh one when it cannot
        begin there: the database may have restarted since)."""
        fresh = self._held is None
        if self._held is None:
            self._held = self.engine.connect()
        try:
            self._attempt_on(self._held, jobs, savepoints=savepoints)
        except _NotBegun:
            self._let_go()
            if fresh:
                raise
            self._attempt(jobs, savepoints=savepoints)
        except BaseException:
            self._let_go()
            raise

    def _attempt_on(self, connection: Connection, jobs: list[_Job], *, savepoints: bool) -> None:
        """The jobs in one transaction; with `savepoints`, each in its own, a job that raises
        keeping its exception; without, the first that raises fails the attempt."""
        with Session(connection, expire_on_commit=False) as session:
            try:
                session.connection()  # BEGIN (IMMEDIATE on SQLite): the one wait for the lock
            except Exception as exc:
                raise _NotBegun(exc) from exc
            if not savepoints:
                session.info[_WAITING] = []
            try:
                for left, job in zip(range(len(jobs), 0, -1), jobs, strict=True):
                    session.info[_JOBS_LEFT] = left
                    job.outcome, job.failure = None, None
                    if not savepoints:
                        job.outcome = job.work(session)
                        continue
                    try:
                        with session.begin_nested():
                            job.outcome = job.work(session)
                    except DBAPIError:
                        # The database's, not the job's: a PostgreSQL deadlock between two
                        # processes' batches (each takes its jobs' rate-limit rows in its
                        # own order), a lost connection. Each job alone, as they came.
                        raise
                    except Exception as exc:  # this job's, undone to its savepoint
                        job.failure = exc
                _run_waiting(session)
                session.commit()
            except BaseException:
                session.rollback()
                raise


def jobs_left(session: Session) -> int:
    """How many jobs of the session's GroupCommit batch are still to run, this one included
    (1 in any other transaction): for work that draws ahead for the rest of its batch."""
    return int(session.info.get(_JOBS_LEFT, 1))


_JOBS_LEFT = "group-commit-jobs-left"
_WAITING = "group-commit-waiting"  # run_with_batch's, in a batch without savepoints


class _NotBegun(Exception):
    """A batch's transaction could not begin: `error` says why."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error

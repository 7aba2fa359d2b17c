"""The schema: migrations match the models, and the database enforces what it should; writes
of many requests committed together keep each request's outcome its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, col, select

from service.db import (
    SQLITE_CACHE_KIB,
    GroupCommit,
    driver_run,
    driver_statement,
    run_with_batch,
    transaction,
)
from service.models import Subscriber


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_email_is_unique(engine: Engine) -> None:
    with transaction(engine) as session:
        session.add(Subscriber(email="reader@example.com"))
    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.add(Subscriber(email="reader@example.com"))


def test_sqlite_runs_in_wal_with_foreign_keys_and_a_small_page_cache(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
        # Negative: KiB, not pages. Bounded per connection, so a long send's memory stays flat.
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB


def test_many_threads_writing_to_sqlite_at_once_all_succeed(database_url: str) -> None:
    """Writers of one process queue for SQLite's write lock instead of sleeping in its busy
    handler: with a short busy timeout, none of them gets "database is locked"."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    import threading
    import time

    from service.db import make_engine

    engine = make_engine(database_url, busy_timeout=1.0)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        for n in range(20):
            try:
                with transaction(engine) as session:
                    session.add(Subscriber(email=f"w{worker}-{n}@example.com"))
                    session.flush()
                    time.sleep(0.002)  # a transaction that takes a little while
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert errors == []
    with transaction(make_engine(database_url)) as session:
        count = session.execute(text("SELECT count(*) FROM subscribers")).scalar_one()
    assert count == 16 * 20


def add_reader(
    session: Session, email: str, *, then_fail: bool = False, break_sql: bool = False
) -> str:
    session.add(Subscriber(email=email))
    session.flush()
    if then_fail:
        raise ValueError(f"{email} changed its mind")
    if break_sql:
        session.execute(text("SELECT * FROM no_such_table"))
    return email


def emails(engine: Engine) -> set[str]:
    """Which of the tests' three readers are in the database."""
    wanted = ["a@example.com", "b@example.com", "c@example.com"]
    with transaction(engine) as session:
        return set(session.exec(select(Subscriber.email).where(col(Subscriber.email).in_(wanted))))


def three_at_once(writes: GroupCommit, **b_fails: bool) -> list[str | BaseException]:
    """Readers a, b (failing as `b_fails` says) and c added by three requests of one moment:
    what each request got back, its email or its exception."""

    async def together() -> list[str | BaseException]:
        return await asyncio.gather(
            writes.run(add_reader, "a@example.com"),
            writes.run(add_reader, "b@example.com", **b_fails),
            writes.run(add_reader, "c@example.com"),
            return_exceptions=True,
        )

    return asyncio.run(together())


def only_b_failed(
    outcomes: list[str | BaseException], error: type[BaseException], engine: Engine
) -> None:
    first, second, third = outcomes
    assert (first, third) == ("a@example.com", "c@example.com")
    assert isinstance(second, error)  # and only b's insert was undone
    assert emails(engine) == {"a@example.com", "c@example.com"}


@contextmanager
def on_commit(engine: Engine, listener: Callable[[object], None]) -> Iterator[None]:
    """`listener` called before each COMMIT on `engine` (the tests share one engine)."""
    event.listen(engine, "commit", listener)
    try:
        yield
    finally:
        event.remove(engine, "commit", listener)


def test_jobs_committed_together_each_get_their_own_outcome(engine: Engine) -> None:
    writes = GroupCommit(engine)
    commits = [0]

    def counted(_conn: object) -> None:
        commits[0] += 1

    with on_commit(engine, counted):
        outcomes = three_at_once(writes, then_fail=True)
    # One COMMIT: the batch went without savepoints, was rolled back when b raised, and went
    # again with one per job.
    assert commits[0] == 1
    only_b_failed(outcomes, ValueError, engine)


def test_a_batch_that_cannot_commit_is_done_again_one_job_at_a_time(engine: Engine) -> None:
    writes = GroupCommit(engine)
    failed = []

    def first_commit_fails(_conn: object) -> None:  # as a full disk would
        if not failed:
            failed.append(True)
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    with on_commit(engine, first_commit_fails):
        outcomes = three_at_once(writes, then_fail=True)
    assert failed == [True]
    only_b_failed(outcomes, ValueError, engine)


def test_a_lone_job_whose_commit_fails_hears_of_it_and_leaves_nothing(engine: Engine) -> None:
    writes = GroupCommit(engine)

    def commit_fails(_conn: object) -> None:
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    with on_commit(engine, commit_fails), pytest.raises(OperationalError):
        asyncio.run(writes.run(add_reader, "a@example.com"))
    assert emails(engine) == set()


def test_batches_take_savepoints_only_after_a_job_raised(engine: Engine) -> None:
    writes = GroupCommit(engine)
    savepoints: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.startswith("SAVEPOINT"):
            savepoints.append(statement)

    async def batch(*jobs: tuple[str, bool]) -> int:
        before = len(savepoints)
        await asyncio.gather(
            *(writes.run(add_reader, email, then_fail=fail) for email, fail in jobs),
            return_exceptions=True,
        )
        return len(savepoints) - before

    async def three_batches() -> list[int]:
        return [
            await batch(("a@example.com", False), ("b@example.com", True)),  # done again
            await batch(("c@example.com", False), ("d@example.com", False)),  # still careful
            await batch(("e@example.com", False), ("f@example.com", False)),  # trusted again
        ]

    event.listen(engine, "before_cursor_execute", seen)
    try:
        per_batch = asyncio.run(three_batches())
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert per_batch == [2, 2, 0]
    with transaction(engine) as session:
        stored = set(session.exec(select(Subscriber.email)))
    assert {"a@example.com", "c@example.com", "d@example.com", "e@example.com"} <= stored
    assert "b@example.com" not in stored


def test_a_database_error_in_a_batch_sends_each_job_alone(engine: Engine) -> None:
    # A database error is not a job's own failure to keep in its savepoint (on PostgreSQL a
    # deadlock between two processes' batches): the jobs go again, each in its own
    # transaction, and only the one that fails by itself hears of it.
    writes = GroupCommit(engine)

    only_b_failed(three_at_once(writes, break_sql=True), DBAPIError, engine)


def echo(engine: Engine) -> str:
    """A statement that returns its one parameter, in the driver's own parameter style."""
    return "SELECT :value" if engine.dialect.name == "sqlite" else "SELECT %(value)s"


def add_and_echo(session: Session, email: str, *, seen: list[str], refuse: bool = False) -> str:
    """add_reader, then a statement left for the batch whose `then` records its rows (and,
    with `refuse`, raises as a spent rate limit would)."""
    add_reader(session, email)
    seen.append(f"work {email}")

    def then(rows: list[list[object]]) -> None:
        [[(value,)]] = rows
        seen.append(f"then {value}")
        if refuse:
            raise ValueError(f"{email} was refused")

    run_with_batch(session, [(echo(session.get_bind()), {"value": email})], then)  # type: ignore[arg-type]
    return email


def test_statements_left_for_the_batch_go_after_every_job_and_their_thens_in_order(
    engine: Engine,
) -> None:
    writes, seen = GroupCommit(engine), []

    async def together() -> list[str]:
        return await asyncio.gather(
            *(writes.run(add_and_echo, f"{n}@example.com", seen=seen) for n in "abc")
        )

    assert asyncio.run(together()) == ["a@example.com", "b@example.com", "c@example.com"]
    works = [f"work {n}@example.com" for n in "abc"]
    assert seen == [*works, *(w.replace("work", "then") for w in works)]


def test_a_then_that_raises_fails_only_its_own_job(engine: Engine) -> None:
    writes, seen = GroupCommit(engine), []

    async def together() -> list[str | BaseException]:
        return await asyncio.gather(
            writes.run(add_and_echo, "a@example.com", seen=seen),
            writes.run(add_and_echo, "b@example.com", seen=seen, refuse=True),
            writes.run(add_and_echo, "c@example.com", seen=seen),
            return_exceptions=True,
        )

    only_b_failed(asyncio.run(together()), ValueError, engine)
    # Done again one savepoint per job, where nothing waits for the batch.
    assert seen[-6:] == [f"{step} {n}@example.com" for n in "abc" for step in ("work", "then")]


def test_outside_a_batch_the_statements_run_at_once(engine: Engine) -> None:
    seen: list[str] = []
    with transaction(engine) as session:
        add_and_echo(session, "a@example.com", seen=seen)
        seen.append("after")
    assert seen == ["work a@example.com", "then a@example.com", "after"]
    assert emails(engine) == {"a@example.com"}


def test_the_batches_of_a_burst_share_one_connection_and_give_it_back(engine: Engine) -> None:
    writes = GroupCommit(engine, batch_limit=4)
    checkouts = [0]

    def counted(*_args: object) -> None:
        checkouts[0] += 1

    async def burst() -> list[str]:
        return await asyncio.gather(
            *(writes.run(add_reader, f"burst{n}@example.com") for n in range(20))
        )

    event.listen(engine.pool, "checkout", counted)
    try:
        assert len(asyncio.run(burst())) == 20  # five batches
    finally:
        event.remove(engine.pool, "checkout", counted)
    assert checkouts[0] == 1
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_connection_that_broke_during_a_burst_is_not_kept(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL backend that goes away")
    writes, killed = GroupCommit(engine, batch_limit=1), []

    def add_after_a_restart(session: Session, email: str) -> str:
        if email == "b@example.com" and not killed:  # the server drops the burst's connection
            killed.append(True)
            session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return add_reader(session, email)

    async def burst() -> list[str]:
        return await asyncio.gather(
            *(writes.run(add_after_a_restart, f"{n}@example.com") for n in "abc")
        )

    assert asyncio.run(burst()) == ["a@example.com", "b@example.com", "c@example.com"]
    assert killed == [True]
    assert emails(engine) == {"a@example.com", "b@example.com", "c@example.com"}


def test_the_driver_stores_a_moment_as_sqlalchemy_does(engine: Engine) -> None:
    # A whole second too: sqlite3's own adapter would drop its ".000000", and SQLite compares
    # the text (limits' SQL even reads it by position).
    moment = datetime(2026, 11, 28, 6, 0, 0)
    columns = {"name": "", "status": "pending", "created_at": moment, "updated_at": moment}
    with transaction(engine) as session:
        session.add(Subscriber(email="orm@example.com", **columns))
        with pytest.raises(ValueError, match="digest_weekday"):  # its default would be NULL
            driver_statement(session, insert(Subscriber), ("email", *columns, "cadence"))
        row = {"email": "driver@example.com", **columns, "cadence": "daily", "digest_weekday": 0}
        sql, held = driver_statement(session, insert(Subscriber), tuple(row))
        driver_run(session, [(sql, {**held, **row})])
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT CAST(created_at AS TEXT) FROM subscribers").all()
    assert len(set(stored)) == 1, stored
    with transaction(engine) as session:
        assert set(session.exec(select(Subscriber.created_at))) == {moment}

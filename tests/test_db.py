"""The schema: migrations match the models, and the database enforces what it should."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from service.db import SQLITE_CACHE_KIB, transaction
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

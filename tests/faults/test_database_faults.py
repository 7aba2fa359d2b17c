"""The database goes away mid-send: PostgreSQL's backend is terminated, or the whole server
restarts. The worker's send heals by itself (the periodic resume) and loses nobody. On
SQLite, a second writer holding the lock only makes the send wait."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from tests import processes
from tests.daily import SEED_DAY
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer

READERS = 2000
CONNECTIONS = 8


def _postgres_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL fault")


def _terminate_backends(engine: Engine) -> int:
    """Kill every other session on the test database, as a failover or an admin would."""
    with engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    return int(killed)


def _restart_postgresql() -> None:
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or not clusters.is_dir() or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster, run as root")
    [version] = [p.name for p in clusters.iterdir()]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
    )


def _heals_by_itself(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    fault: Callable[[], object],
) -> None:
    readers = processes.add_readers(engine, READERS)
    env = processes.environment(
        database_url,
        tmp_path / "var",
        smtp_server.url,
        **processes.send_time_passed(tmp_path / "columns"),  # catch-up sends at once
        delivery_rate=150,
        delivery_connections=CONNECTIONS,
        resume_interval=1,
        retry_initial_seconds=0.2,
        retry_max_seconds=2,
    )
    log = tmp_path / "worker.log"
    worker = processes.start("worker", env=env, log=log)
    try:
        assert eventually(
            lambda: len(smtp_server.received) >= 400 or worker.poll() is not None, timeout=60
        )
        assert worker.poll() is None, log.read_text()[-2000:]
        fault()
        recovered_at = time.monotonic()
        everyone = eventually(
            lambda: set(smtp_server.per_recipient()) >= set(readers), timeout=120, every=0.5
        )
        assert everyone, f"{READERS - len(smtp_server.per_recipient())} readers missed"
        assert time.monotonic() - recovered_at < 90
        # each hand-off cut off by the fault may be repeated once: at most one per connection
        duplicates = sum(smtp_server.per_recipient().values()) - READERS
        assert duplicates <= CONNECTIONS, duplicates
        assert eventually(
            lambda: '"status": "done"' in processes.run("status", "--json", env=env).stdout,
            timeout=30,
            every=1,
        )
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert "Traceback" not in processes.run("status", env=env).stderr


def test_terminated_backend_mid_send_heals_by_itself(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    _postgres_only(engine)

    def terminate() -> None:
        assert _terminate_backends(engine) >= 1

    _heals_by_itself(engine, database_url, tmp_path, smtp_server, terminate)


@pytest.mark.exclusive  # every worker's database is on that server
def test_postgresql_restart_mid_send_heals_by_itself(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    _postgres_only(engine)
    _heals_by_itself(engine, database_url, tmp_path, smtp_server, _restart_postgresql)


def test_sqlite_writer_holding_the_lock_only_makes_the_send_wait(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite locking")
    readers = processes.add_readers(engine, 3000)
    env = processes.environment(database_url, tmp_path / "var", smtp_server.url)
    path = make_url(database_url).database
    assert path is not None
    held = threading.Event()

    def hold_the_lock() -> None:
        holder = sqlite3.connect(path, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(3)  # well inside the 10 s busy timeout
        holder.execute("COMMIT")
        holder.close()

    send = processes.start("send", "--date", SEED_DAY.isoformat(), env=env, log=tmp_path / "log")
    assert eventually(lambda: len(smtp_server.received) >= 300, timeout=60)
    locker = threading.Thread(target=hold_the_lock)
    locker.start()
    assert held.wait(15), "the second writer never got the lock"
    during = len(smtp_server.received)
    assert send.wait(timeout=120) == 0, (tmp_path / "log").read_text()[-2000:]
    locker.join()
    assert during < len(readers)  # the lock was held while the send went on
    got = smtp_server.per_recipient()
    assert sorted(got) == readers and set(got.values()) == {1}
    assert "database is locked" not in (tmp_path / "log").read_text()

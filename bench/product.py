"""What the bench asks of Broadside itself: its settings as the environment of its commands, a
fresh database, its readers' time zones, the snapshot timed in-process, one reader's column
mail, and the ledger.

Everything else the bench measures runs as the product's own commands (`broadside subscribers
import`, `broadside send`, `broadside worker`), configured only through BROADSIDE_* variables,
exactly as an operator would run them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url

from service.config import ENV_PREFIX, Settings, load_settings
from service.context import build_context
from service.db import make_engine, transaction
from service.delivery import daily, sends
from service.delivery.courier import Courier
from service.mail.smtp import SmtpTarget
from service.migrate import upgrade
from service.models import Delivery, Send, Subscriber, SubscriberStatus

ROOT = Path(__file__).resolve().parent.parent
SEED_DAY = dt.date(2016, 2, 4)  # seeds/world-view-2016-02-04.txt
BROADSIDE = str(Path(sys.executable).with_name("broadside"))
DKIM_DOMAIN, DKIM_SELECTOR = "news.example.com", "bench"
STALL_SECONDS = 90.0  # a send whose ledger has not moved for this long is stuck
LOCAL, FIXED = "local", "fixed"  # DELIVERY_TIMING: each reader's SEND_TIME, or one for all


@dataclass(frozen=True)
class Product:
    """One database and the settings every command of one measurement runs with."""

    database_url: str
    workdir: Path
    connections: int
    dkim_key: Path | None
    delivery_timing: str = LOCAL  # the product's default, named so the report can say it
    build_processes: int | None = None  # DELIVERY_BUILD_PROCESSES; None: the product's default

    def timed(self, timing: str) -> Product:
        """The same product with DELIVERY_TIMING=`timing` (its commands and in-process)."""
        return replace(self, delivery_timing=timing)

    def values(self, smtp_port: int | None = None) -> dict[str, str]:
        """The settings as BROADSIDE_* names (without the prefix) and string values."""
        values = {
            "DATABASE_URL": self.database_url,
            "VAR_DIR": str(self.workdir / "var"),
            "SECRET_KEY": "bench-secret-key-long-enough",
            "BASE_URL": f"https://{DKIM_DOMAIN}",
            "FROM_ADDRESS": f"worldview@{DKIM_DOMAIN}",
            "COLUMNS_DIR": str(ROOT / "seeds"),
            "DELIVERY_CONNECTIONS": str(self.connections),
            "DELIVERY_TIMING": self.delivery_timing,
            "LOG_LEVEL": "WARNING",
        }
        if self.build_processes is not None:
            values["DELIVERY_BUILD_PROCESSES"] = str(self.build_processes)
        if smtp_port is not None:
            values["SMTP_URL"] = f"smtp://127.0.0.1:{smtp_port}"
        if self.dkim_key is not None:
            values |= {
                "DKIM_DOMAIN": DKIM_DOMAIN,
                "DKIM_SELECTOR": DKIM_SELECTOR,
                "DKIM_PRIVATE_KEY": str(self.dkim_key),
            }
        return values

    def env(self, smtp_port: int | None = None) -> dict[str, str]:
        """The environment of a `broadside` command: ours, without the developer's own
        BROADSIDE_* settings (a .env in the checkout is not read: commands run in workdir)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        return clean | {ENV_PREFIX + k: v for k, v in self.values(smtp_port).items()}

    def settings(self) -> Settings:
        """The same settings, in-process."""
        values = {k.lower(): v for k, v in self.values().items()}
        return load_settings(_env_file=None, **values)


def broadside(*args: str) -> list[str]:
    """A `broadside` command line (the console script beside this interpreter)."""
    return [BROADSIDE, *args]


@contextlib.contextmanager
def fresh_database(server_url: str | None, workdir: Path) -> Iterator[str]:
    """A SQLite file in `workdir`, or a new PostgreSQL database dropped afterwards."""
    if server_url is None:
        yield f"sqlite:///{workdir / 'broadside.db'}"
        return
    admin = create_engine(
        make_url(server_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    name = f"broadside_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as conn:  # fails loudly when PostgreSQL is unreachable
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(server_url).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_server(server_url: str) -> str:
    """The server's URL with the driver the product uses (psycopg 3), for code that passes it
    to SQLAlchemy as it is."""
    url = make_url(server_url).set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def postgres_version(server_url: str) -> str:
    engine = create_engine(postgres_server(server_url))
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """Create the schema (not measured)."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def spread_readers(url: str, zones: Sequence[str]) -> None:
    """Give every reader the zone readers.reader_zone names (not measured): one UPDATE of all
    of them through a temporary table of the zones. On PostgreSQL the table is then vacuumed
    and analyzed, so that the snapshot reads it as a server in service has it: without a dead
    row beside each live one, and with statistics of the zones."""
    table = Table(
        "bench_zones",
        MetaData(),
        Column("slot", Integer, primary_key=True),
        Column("name", String(64), nullable=False),
        prefixes=["TEMPORARY"],
    )
    readers: Table = Subscriber.__table__  # type: ignore[attr-defined]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(insert(table), [{"slot": i, "name": z} for i, z in enumerate(zones, 1)])
            slot = readers.c.id % (len(zones) + 1)  # as readers.zone_slot: 0 keeps none
            zone = select(table.c.name).where(table.c.slot == slot).scalar_subquery()
            conn.execute(update(readers).values(timezone=zone))
            table.drop(conn)
        vacuum(engine, readers.name)
    finally:
        engine.dispose()


def reader_zones(url: str) -> tuple[int, int]:
    """Among the active readers: how many distinct zones they chose, and how many chose none."""
    readers: Table = Subscriber.__table__  # type: ignore[attr-defined]
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            zones, unzoned = conn.execute(
                select(
                    func.count(readers.c.timezone.distinct()),
                    func.count().filter(readers.c.timezone.is_(None)),
                ).where(readers.c.status == SubscriberStatus.active.value)
            ).one()
    finally:
        engine.dispose()
    return int(zones), int(unzoned)


def forget_send(url: str, send_id: int) -> None:
    """Delete a send and its ledger rows (not measured), so that the next snapshot starts
    the seed column's send afresh for the same readers; on PostgreSQL the ledger is then
    vacuumed, so that the next one does not insert beside a million dead rows."""
    deliveries: Table = Delivery.__table__  # type: ignore[attr-defined]
    sends_table: Table = Send.__table__  # type: ignore[attr-defined]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(deliveries).where(deliveries.c.send_id == send_id))
            conn.execute(delete(sends_table).where(sends_table.c.id == send_id))
        vacuum(engine, deliveries.name)
    finally:
        engine.dispose()


def settle(url: str) -> None:
    """Before a measured send (and the limit and the ceiling): PostgreSQL's dirty buffers
    written out (CHECKPOINT), then every file's dirty pages flushed to disk (sync), so that the
    writes of the import, the snapshot or the last ledger's deletion are not still going out
    while the command is timed."""
    engine = make_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("CHECKPOINT"))
    finally:
        engine.dispose()
    os.sync()


def vacuum(engine: Engine, table: str) -> None:
    """VACUUM ANALYZE one table on PostgreSQL (outside a transaction); nothing on SQLite."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text(f'VACUUM ANALYZE "{table}"')
        )


@dataclass(frozen=True)
class Snapshot:
    """A send started by the product's own function, and how long that took."""

    send_id: int
    total: int
    seconds: float
    cpu_s: float  # this process's CPU meanwhile (SQLite's work happens here)


def start_send(product: Product) -> Snapshot:
    """Import the seed column, then time `daily.start_send` (what the scheduler, `broadside
    send` and the dashboard all call): the check that the column can be mailed and the
    set-based snapshot of every active reader into the ledger."""
    settings = product.settings()
    engine = make_engine(product.database_url)
    try:
        daily.refresh_columns(engine, settings)
        column = daily.column_of(engine, SEED_DAY)
        if column is None:
            raise RuntimeError(f"the seed column of {SEED_DAY} was not imported")
        started, cpu = time.perf_counter(), time.process_time()
        send, created = daily.start_send(engine, settings, column)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if not created:
            raise RuntimeError(f"a send of {SEED_DAY} existed already in a fresh database")
        return Snapshot(send.id or 0, send.total, seconds, cpu)
    finally:
        engine.dispose()


def column_mail(product: Product) -> bytes:
    """The seed column as the first reader gets it, built by the product's own code (signed
    when the run signs): the message the ceiling blasts."""
    settings = product.settings()
    engine = make_engine(product.database_url)
    try:
        column = daily.column_of(engine, SEED_DAY)
        assert column is not None, "start_send() imported it"
        courier = Courier(engine, build_context(settings), SmtpTarget.local(25))
        # reader_copy builds one reader's mail exactly as a send would (the preview's path).
        return daily.reader_copy(
            courier, column, to="reader0000001@example.com", name="Reader 1", subscriber_id=2
        )
    finally:
        engine.dispose()


def active_readers(url: str) -> int:
    engine = make_engine(url)
    try:
        with transaction(engine) as session:
            return sends.active_readers(session)
    finally:
        engine.dispose()


def ledger_state(url: str, send_id: int) -> dict[str, Any]:
    """The send's status and its deliveries counted by state."""
    engine = make_engine(url)
    try:
        with transaction(engine) as session:
            send = session.get(Send, send_id)
            assert send is not None
            return {"status": str(send.status), **asdict(sends.counts(session, send_id))}
    finally:
        engine.dispose()


def ledger_problem(state: dict[str, Any], readers: int) -> str | None:
    """Why the ledger does not show a finished send of `readers` sent; None if it does."""
    wanted = {"status": "done", "total": readers, "sent": readers, "failed": 0, "pending": 0}
    if all(str(state.get(key)) == str(value) for key, value in wanted.items()):
        return None
    return f"the ledger shows {state}; expected {readers} sent, 0 failed, status done"


def delivery_rate(url: str, send_id: int) -> float | None:
    """Messages per second between the first and the last `sent_at` the ledger wrote: the
    delivery alone, without any process's start-up (how workers started apart are compared).
    The rows of the first commit are left out, since they were sent before the first stamp."""
    engine = make_engine(url)
    sent_at = Delivery.__table__.c.sent_at  # type: ignore[attr-defined]
    mine = Delivery.__table__.c.send_id == send_id  # type: ignore[attr-defined]
    try:
        with engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(sent_at), func.max(sent_at)).where(mine)
            ).one()
            if first is None or last is None or last <= first:
                return None
            later = conn.execute(select(func.count()).where(mine, sent_at > first)).scalar_one()
    finally:
        engine.dispose()
    return later / (last - first).total_seconds()


def wait_until_sent(
    url: str, send_id: int, readers: int, timeout: float, check: Callable[[], None]
) -> dict[str, Any]:
    """Poll the ledger every quarter second until the send is done with every reader sent
    (workers never exit by themselves), calling `check` (which raises when a worker died)
    between looks. Gives up, returning the ledger's last state, after `timeout` seconds or
    once nothing has moved for STALL_SECONDS."""
    engine = make_engine(url)
    deadline = time.monotonic() + timeout
    moved, last = time.monotonic(), None
    try:
        while True:
            with transaction(engine) as session:
                send = session.get(Send, send_id)
                assert send is not None
                state = {"status": str(send.status), **asdict(sends.counts(session, send_id))}
            now = time.monotonic()
            if state != last:
                moved, last = now, state
            if ledger_problem(state, readers) is None or now > min(deadline, moved + STALL_SECONDS):
                return state
            check()
            time.sleep(0.25)
    finally:
        engine.dispose()

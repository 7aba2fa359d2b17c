"""The send-path benchmark: the raw SMTP ceiling and Broadside's real send path, side by side.

Absolute figures on a shared machine move ±25 % between runs, so each size N is measured
as a pair, one right after the other, against a fresh SMTP sink in its own process:

  ceiling    aiosmtplib blasting one prebuilt copy of the seed column mail (built once by
             our own code) over K reused connections: what this machine can move at all.
  send path  a real database with N active readers and the seed column imported, a send
             started (recipients snapshotted), then SendWorker.run(): per-recipient token
             signing and splice, ledger claims, group-committed outcomes over K connections.

Each measurement runs in a fresh process pinned to CPU 1 (the sink to CPU 0), so that its
peak RSS belongs to that size alone. Both paths are checked: the sink must have received
exactly N messages (one per reader, no duplicates) and the ledger must show N `sent`.

    python -m bench.send                         # N = 5,000, 10,000, 20,000 on SQLite
    python -m bench.send --database-url postgresql://postgres@127.0.0.1:5432/test
    python -m bench.send --quick                 # a smoke run
    python -m bench.send --readers 20000 --k 16 --runs 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import col, select

from service.clock import utcnow
from service.columns.mail import prepare_column
from service.columns.sources import read_column_file
from service.columns.view import ColumnView, column_view
from service.config import Settings, load_settings
from service.context import build_context
from service.db import make_engine, transaction
from service.delivery import sends
from service.delivery.courier import Courier
from service.delivery.daily import refresh_columns
from service.delivery.worker import SendWorker
from service.mail import dkim as dkim_signing
from service.mail.dkim import _Key as _key
from service.mail.smtp import relay_target
from service.migrate import upgrade
from service.models import ColumnRecord, Send, SendStatus, Subscriber, SubscriberStatus
from service.tokens import Purpose

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "seeds" / "world-view-2016-02-04.txt"
SINK_CPU, CLIENT_CPU = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_SAMPLE_SECONDS = 0.02
INSERT_CHUNK = 5_000  # readers per executemany: bounded memory at any N
UNNAMED_EVERY = 10  # every tenth reader gave no name: the anonymous greeting variant
QUICK_READERS = 1_000
MEASUREMENT_TIMEOUT_SECONDS = 900  # a send that never finishes must not hang the bench
DEFAULT_BATCH = Settings.model_fields["delivery_batch_size"].default


# ---------------------------------------------------------------- processes, CPU and memory


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu_seconds() -> float:
    """CPU seconds of every local PostgreSQL process (backends, WAL writer, checkpointer)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (anything but idle and I/O wait), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def status_mb(field_name: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Samples this process's resident set every few milliseconds; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = status_mb("VmRSS")
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(RSS_SAMPLE_SECONDS):
            self.peak_mb = max(self.peak_mb, status_mb("VmRSS"))

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak_mb, status_mb("VmRSS"))


@dataclass
class Meter:
    """Over one window: wall time; CPU of this process, the sink, PostgreSQL and everything
    else on the machine; and this process's resident set."""

    sink_pid: int
    watch_postgres: bool
    readings: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Meter:
        self._sampler = RssSampler()
        self.readings["rss_before_mb"] = status_mb("VmRSS")
        self._sampler.start()
        self._start = self._now()
        return self

    def __exit__(self, *_exc: object) -> None:
        end = self._now()
        self.readings["rss_peak_mb"] = self._sampler.stop()
        self.readings["vm_hwm_mb"] = status_mb("VmHWM")
        self.readings.update({k: end[k] - self._start[k] for k in end})

    def _now(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: the DB work too
        return {
            "wall_s": time.perf_counter(),
            "client_cpu_s": usage.ru_utime + usage.ru_stime,
            "sink_cpu_s": cpu_seconds(self.sink_pid),
            "db_cpu_s": postgres_cpu_seconds() if self.watch_postgres else 0.0,
            "busy_cpu_s": machine_busy_seconds(),
        }

    def result(self, messages: int) -> dict[str, Any]:
        r = self.readings
        wall = r["wall_s"]
        ours = r["client_cpu_s"] + r["sink_cpu_s"] + r["db_cpu_s"]
        return {
            "messages": messages,
            "wall_s": round(wall, 3),
            "msgs_per_s": round(messages / wall, 1),
            "client_cpu_pct": round(100 * r["client_cpu_s"] / wall, 1),
            "sink_cpu_pct": round(100 * r["sink_cpu_s"] / wall, 1),
            "db_cpu_pct": round(100 * r["db_cpu_s"] / wall, 1) if self.watch_postgres else None,
            # Whatever else ran on the machine meanwhile: the noise to read the figures by.
            "other_cpu_pct": round(max(0.0, 100 * (r["busy_cpu_s"] - ours) / wall), 1),
            "rss_before_mb": round(r["rss_before_mb"], 1),
            "rss_peak_mb": round(r["rss_peak_mb"], 1),
            "vm_hwm_mb": round(r["vm_hwm_mb"], 1),
        }


def _child_main(
    pipe: multiprocessing.connection.Connection, job: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        pipe.send(("ok", job(*args)))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def in_fresh_process(job: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run job(*args) in a new interpreter (it inherits this process's CPU pinning)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, job, args))
    process.start()
    sender.close()
    try:
        if not receiver.poll(MEASUREMENT_TIMEOUT_SECONDS):
            process.kill()
            raise TimeoutError
        status, value = receiver.recv()
    except EOFError:
        status, value = "error", "the process died without a word"
    except TimeoutError:
        status, value = "error", f"no result after {MEASUREMENT_TIMEOUT_SECONDS} s; killed"
    process.join()
    if status == "error" and process.exitcode:
        value += f" (exit code {process.exitcode})"
    if status != "ok":
        raise RuntimeError(f"{job.__name__} failed:\n{value}")
    return dict(value)


def can_pin() -> bool:
    return shutil.which("taskset") is not None and {SINK_CPU, CLIENT_CPU} <= os.sched_getaffinity(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sink:
    """bench/sink.py in its own process, pinned to the sink CPU; `stats` is set on exit."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.port = free_port()
        self.stats_path = workdir / f"sink-{self.port}.json"
        command = [sys.executable, "-m", "bench.sink", "--port", str(self.port)]
        command += ["--stats", str(self.stats_path)]
        if pin:
            command = ["taskset", "-c", str(SINK_CPU), *command]
        self.stats: dict[str, Any] = {}
        self.process = subprocess.Popen(command, cwd=ROOT)  # taskset execs: same pid
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                if sock.recv(4).startswith(b"220"):
                    return
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError(f"the sink did not start on port {self.port}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        if self.stats_path.exists():
            self.stats = json.loads(self.stats_path.read_text())


# ---------------------------------------------------------------- the database and the column


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


def reader_address(i: int) -> str:
    return f"reader{i:07d}@example.com"


def add_readers(engine: Engine, readers: int) -> None:
    """N active readers, set-based: one executemany per chunk, no ORM object per row."""
    now = utcnow()
    with transaction(engine) as session:
        for start in range(0, readers, INSERT_CHUNK):
            rows = [
                {
                    "email": reader_address(i),
                    "name": "" if i % UNNAMED_EVERY == 0 else f"Reader {i}",
                    "status": SubscriberStatus.active.value,
                    "created_at": now,
                    "updated_at": now,
                    "confirmed_at": now,
                }
                for i in range(start, min(readers, start + INSERT_CHUNK))
            ]
            session.execute(insert(Subscriber), rows)


def populate(url: str, settings: Settings, readers: int) -> dict[str, Any]:
    """Migrate, add the readers, import the seed column, start its send; time each step."""
    engine = make_engine(url)
    steps: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = step()
        steps[name] = round(time.perf_counter() - started, 3)
        return value

    try:
        timed("migrate_s", lambda: upgrade(engine))
        timed("add_readers_s", lambda: add_readers(engine, readers))
        timed("import_column_s", lambda: refresh_columns(engine, settings))
        send_id, total = timed("start_send_s", lambda: start_send(engine))
        if total != readers:
            raise SystemExit(f"the send snapshotted {total} readers, expected {readers}")
        return {"send_id": send_id, "setup": steps, "message": column_mail(engine, settings)}
    finally:
        engine.dispose()


def start_send(engine: Engine) -> tuple[int, int]:
    with transaction(engine) as session:
        column = session.exec(select(ColumnRecord)).one()  # the seed column, alone
        send, created = sends.start(session, column=column)
        assert created and send.id is not None
        return send.id, send.total


def column_mail(engine: Engine, settings: Settings) -> bytes:
    """The seed column as the first reader gets it, built by the product's own code."""
    ctx = build_context(settings)
    with transaction(engine) as session:
        column = session.exec(select(ColumnRecord)).one()
        reader = session.exec(select(Subscriber).order_by(col(Subscriber.id))).first()
        assert reader is not None and reader.id is not None
    expiry = ctx.tokens.expiry(Purpose.unsubscribe)
    prepared = prepare_column(column_view(column), settings)
    return prepared.message_bytes(
        to=reader.email,
        name=reader.name,
        unsubscribe_url=ctx.unsubscribe_url(reader.id, expiry),
        feedback_url=ctx.feedback_url(reader.id, expiry),
        message_id=f"<column.bench.{reader.id}@{settings.mail_domain}>",
        signer=ctx.dkim,  # the ceiling blasts a message as large as the signed ones
    )


def dkim_cost(settings: Settings, messages: int = 2_000) -> dict[str, float]:
    """CPU ms per message to build one reader's column mail: unsigned, RSA-2048-signed (our
    path: dkimpy's canonicalisation, OpenSSL's signature), both RSA and Ed25519, and dkimpy
    signing the whole message by itself (its pure-Python RSA), for reference."""
    parsed, _text = read_column_file(SEED)
    view = ColumnView.from_parsed(parsed, slug="seed", base_url=settings.base_url)
    prepared = prepare_column(view, settings)
    rsa_key = dkim_signing.new_key("rsa")
    ed_key = dkim_signing.new_key("ed25519")
    signers: dict[str, dkim_signing.DkimSigner | None] = {
        "unsigned": None,
        "rsa": dkim_signing.DkimSigner("news.example.com", [_key(b"b", b"rsa-sha256", rsa_key)]),
        "rsa+ed25519": dkim_signing.DkimSigner(
            "news.example.com",
            [_key(b"b", b"rsa-sha256", rsa_key), _key(b"e", b"ed25519-sha256", ed_key)],
        ),
    }

    def build(signer: dkim_signing.DkimSigner | None, i: int) -> bytes:
        return prepared.message_bytes(
            to=reader_address(i),
            name=f"Reader {i}",
            unsubscribe_url=f"https://news.example.com/unsubscribe/{secrets.token_urlsafe(60)}",
            feedback_url=f"https://news.example.com/feedback?t={secrets.token_urlsafe(60)}",
            message_id=f"<column.bench.{i}@news.example.com>",
            signer=signer,
        )

    cost: dict[str, float] = {}
    for label, signer in signers.items():
        started = time.process_time()
        for i in range(messages):
            build(signer, i)
        cost[label] = round((time.process_time() - started) * 1000 / messages, 3)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    sample = [build(None, i) for i in range(100)]
    started = time.process_time()
    for message in sample:
        dkim.sign(message, b"b", b"news.example.com", pem, canonicalize=(b"relaxed", b"relaxed"))
    cost["dkimpy_alone"] = round((time.process_time() - started) * 1000 / len(sample), 3)
    return cost


def ledger_state(url: str, send_id: int) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with transaction(engine) as session:
            send = session.get(Send, send_id)
            assert send is not None
            return {"status": send.status, **asdict(sends.counts(session, send_id))}
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the two measured paths


def ceiling_job(
    port: int, sink_pid: int, k: int, messages: int, data: bytes, mail_from: str, watch_pg: bool
) -> dict[str, Any]:
    """The raw ceiling: one prebuilt message for everybody over K reused connections."""
    return asyncio.run(_blast(port, sink_pid, k, messages, data, mail_from, watch_pg))


async def _blast(
    port: int, sink_pid: int, k: int, messages: int, data: bytes, mail_from: str, watch_pg: bool
) -> dict[str, Any]:
    connections = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.localhost")
        for _ in range(k)
    ]
    await asyncio.gather(*(c.connect() for c in connections))
    todo = iter(range(messages))

    async def deliver(smtp: aiosmtplib.SMTP) -> None:
        for i in todo:
            await smtp.sendmail(mail_from, [reader_address(i)], data)

    with Meter(sink_pid, watch_pg) as meter:
        await asyncio.gather(*(deliver(c) for c in connections))
    await asyncio.gather(*(c.quit() for c in connections))
    return meter.result(messages)


def send_path_job(
    settings_values: dict[str, Any], send_id: int, sink_pid: int, watch_pg: bool
) -> dict[str, Any]:
    """Broadside's real send: SendWorker.run() on a send already started."""
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(**settings_values)
    target = relay_target(settings)
    assert target is not None
    engine = make_engine(settings.database_url)
    worker = SendWorker(Courier(engine, build_context(settings), target))
    try:
        with Meter(sink_pid, watch_pg) as meter:
            counts = asyncio.run(worker.run(send_id))
    finally:
        engine.dispose()
    return {**meter.result(counts.sent), "counts": asdict(counts)}


# ---------------------------------------------------------------- one size, all sizes


def settings_values(url: str, var_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "_env_file": None,
        "database_url": url,
        "var_dir": var_dir,
        "secret_key": "bench-secret-key-long-enough",
        "base_url": "https://news.example.com",
        "from_address": "worldview@news.example.com",
        "delivery_connections": args.k,
        "delivery_batch_size": args.batch_size,
        "columns_dir": ROOT / "seeds",
        **(
            {
                "dkim_domain": "news.example.com",
                "dkim_selector": "bench",
                "dkim_private_key": str(args.dkim_key),
            }
            if args.dkim_key
            else {}
        ),
    }


def check_sink(what: str, stats: dict[str, Any], readers: int) -> None:
    """Fail loudly unless the sink took exactly one message for each reader."""
    got = (stats.get("messages"), stats.get("unique_recipients"), stats.get("duplicate_deliveries"))
    if got != (readers, readers, 0):
        raise SystemExit(
            f"{what}: the sink received {got[0]} messages for {got[1]} recipients "
            f"({got[2]} duplicates); expected {readers} for {readers}, no duplicates"
        )


def check_ledger(state: dict[str, Any], readers: int) -> None:
    wanted = {"status": SendStatus.done, "total": readers, "sent": readers, "failed": 0}
    if any(state.get(key) != value for key, value in wanted.items()) or state["pending"]:
        raise SystemExit(f"send path: the ledger shows {state}, expected {readers} sent")


def measure_size(args: argparse.Namespace, readers: int, pin: bool) -> dict[str, Any]:
    """Ceiling then send path for N readers, on a fresh database and fresh sinks."""
    watch_pg = args.database_url is not None
    with (
        tempfile.TemporaryDirectory(prefix="broadside-bench-") as tmp,
        fresh_database(args.database_url, Path(tmp)) as url,
    ):
        workdir = Path(tmp)
        values = settings_values(url, workdir / "var", args)
        settings = load_settings(**values)
        setup = populate(url, settings, readers)
        with Sink(workdir, pin) as sink:
            ceiling = in_fresh_process(
                ceiling_job,
                sink.port,
                sink.pid,
                args.k,
                readers,
                setup["message"],
                settings.mail_from,
                watch_pg,
            )
        check_sink("ceiling", sink.stats, readers)
        with Sink(workdir, pin) as sink:
            values["smtp_url"] = f"smtp://127.0.0.1:{sink.port}"
            path = in_fresh_process(send_path_job, values, setup["send_id"], sink.pid, watch_pg)
        check_sink("send path", sink.stats, readers)
        path["ledger"] = ledger_state(url, setup["send_id"])
        check_ledger(path["ledger"], readers)
    return {
        "readers": readers,
        "message_bytes": len(setup["message"]),
        "setup": setup["setup"],
        "ceiling": ceiling,
        "send_path": path,
        "ratio": round(path["msgs_per_s"] / ceiling["msgs_per_s"], 3),
    }


def sizes_for(readers: int) -> list[int]:
    """Half, the asked size and double: the memory trend around the size of interest."""
    return sorted({max(1, readers // 2), readers, readers * 2})


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiosmtplib": aiosmtplib.__version__,
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": os.getloadavg(),
    }


def postgres_version(server_url: str) -> str:
    engine = create_engine(make_url(server_url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


# ---------------------------------------------------------------- report


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def summarize(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: medians over the runs of each path's figures, and of the per-run ratios."""
    summary = []
    for readers in sorted({m["readers"] for m in measurements}):
        runs = [m for m in measurements if m["readers"] == readers]
        row: dict[str, Any] = {"readers": readers, "runs": len(runs)}
        for path in ("ceiling", "send_path"):
            figures = [m[path] for m in runs]
            row[path] = {
                key: median_of(figures, key)
                for key in (
                    "msgs_per_s",
                    "client_cpu_pct",
                    "sink_cpu_pct",
                    "db_cpu_pct",
                    "other_cpu_pct",
                    "rss_before_mb",
                    "rss_peak_mb",
                )
            }
        row["ratio"] = round(statistics.median(m["ratio"] for m in runs), 2)
        summary.append(row)
    return summary


def _cell(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(summary: list[dict[str, Any]], with_db: bool) -> str:
    """The results table, one row per size and path."""
    db_head, db_rule = (" DB server CPU % |", "---:|") if with_db else ("", "")
    lines = [
        f"| readers N | path | messages/s | client CPU % | sink CPU % |{db_head}"
        " other load CPU % | RSS before MiB | peak RSS MiB | share of ceiling |",
        f"|---:|---|---:|---:|---:|{db_rule}---:|---:|---:|---:|",
    ]
    for row in summary:
        for path, label in (("ceiling", "raw ceiling"), ("send_path", "send path")):
            f = row[path]
            db = f" {_cell(f['db_cpu_pct'])} |" if with_db else ""
            share = "1.00" if path == "ceiling" else f"**{row['ratio']:.2f}**"
            lines.append(
                f"| {row['readers']:,} | {label} | {_cell(f['msgs_per_s'])} |"
                f" {_cell(f['client_cpu_pct'])} | {_cell(f['sink_cpu_pct'])} |{db}"
                f" {_cell(f['other_cpu_pct'])} | {_cell(f['rss_before_mb'], 1)} |"
                f" {_cell(f['rss_peak_mb'], 1)} | {share} |"
            )
    return "\n".join(lines)


def _figures(f: dict[str, Any]) -> str:
    db = f", db {f['db_cpu_pct']:.0f}%" if f["db_cpu_pct"] is not None else ""
    return (
        f"{f['msgs_per_s']:7.1f} msg/s (client {f['client_cpu_pct']:.0f}%,"
        f" sink {f['sink_cpu_pct']:.0f}%{db}, other {f['other_cpu_pct']:.0f}%)"
    )


def progress(run: int, m: dict[str, Any]) -> str:
    return (
        f"run {run} N={m['readers']:<7} ceiling {_figures(m['ceiling'])}"
        f"  send path {_figures(m['send_path'])}  ratio {m['ratio']:.2f}"
        f"  peak RSS {m['send_path']['rss_peak_mb']:.1f} MiB"
    )


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.send", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--readers", type=int, default=10_000, help="N (also N/2 and 2N)")
    parser.add_argument("--k", type=int, default=8, help="SMTP connections, both paths")
    parser.add_argument("--runs", type=int, default=1, help="repeat every size; medians")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="claim batch")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/test"
        " (a fresh database is created on it and dropped); default: SQLite in a temp dir",
    )
    parser.add_argument("--quick", action="store_true", help=f"N={QUICK_READERS:,}: smoke run")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--no-dkim", dest="dkim", action="store_false", help="send unsigned (default: RSA-2048)"
    )
    args = parser.parse_args(argv)
    args.dkim_key = None
    if args.quick:
        args.readers = QUICK_READERS
    if args.database_url and not args.database_url.startswith(("postgres://", "postgresql")):
        parser.error("--database-url takes a PostgreSQL URL; SQLite is the default")
    if args.readers < 1 or args.k < 1 or args.runs < 1:
        parser.error("--readers, --k and --runs must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name in [n for n in os.environ if n.startswith("BROADSIDE_")]:
        del os.environ[name]  # the developer's own settings must not leak into the bench
    pin = can_pin()
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})  # the measured processes inherit it
    info = machine()
    if args.database_url:
        info["postgresql"] = postgres_version(args.database_url)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    signed = "DKIM RSA-2048" if args.dkim else "unsigned"
    print(
        f"{backend}, K={args.k}, batch {args.batch_size}, sizes {sizes_for(args.readers)},"
        f" {args.runs} run(s), {signed};"
        f" {'sink on CPU 0, client on CPU 1' if pin else 'not pinned'}",
        flush=True,
    )
    started = time.perf_counter()
    measurements = []
    with tempfile.TemporaryDirectory(prefix="broadside-bench-key-") as keys:
        if args.dkim:
            args.dkim_key = Path(keys) / "bench.pem"
            dkim_signing.write_key(dkim_signing.new_key("rsa"), args.dkim_key)
        cost = dkim_cost(load_settings(**settings_values("sqlite://", Path(keys), args)))
        print(
            "building one reader's column mail, CPU ms: unsigned {unsigned}, RSA {rsa},"
            " RSA+Ed25519 {rsa+ed25519}; dkimpy signing alone {dkimpy_alone}".format_map(cost),
            flush=True,
        )
        for run in range(1, args.runs + 1):
            for readers in sizes_for(args.readers):
                measurement = measure_size(args, readers, pin)
                measurement["run"] = run
                measurements.append(measurement)
                print(progress(run, measurement), flush=True)
    summary = summarize(measurements)
    table = markdown(summary, with_db=args.database_url is not None)
    print(f"\n{backend}, K={args.k}, {signed}, {dt.date.today().isoformat()}, {info['cpu_model']},")
    print(f"{info['nproc']} CPUs, Python {info['python']}; medians of {args.runs} run(s)\n")
    print(table)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        report = {
            "argv": sys.argv,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "backend": backend,
            "k": args.k,
            "batch_size": args.batch_size,
            "dkim": args.dkim,
            "dkim_cost_ms_per_message": cost,
            "pinned": pin,
            "machine": {**info, "loadavg_at_end": os.getloadavg()},
            "summary": summary,
            "measurements": measurements,
        }
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

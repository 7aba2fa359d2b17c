"""One size on one database: import, snapshot, the machine's limit, the sendmail() ceiling and
the real send path, each measured from outside as a whole command, one right after the other.

Absolute rates on these shared machines move ±25 % between runs, so the three rates that are
compared (limit, ceiling, send path) are taken back to back against a fresh sink of the same
kind, on the same database that was just filled; their ratios are the figures to read.

The readers live in 400 time zones (issue 16), and both DELIVERY_TIMING modes are measured
on the same readers: the snapshot in each (fixed first, then local, which is kept and sent),
and, where asked, three more sends of the same readers after the local one, each a ceiling
and a send path: fixed, fixed, local (A B B A), so that the local send path's share of its
ceiling can be held against the fixed one's without the machine's drift taking sides.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.clock import zone_names

from . import goals, product
from .procs import Usage, Window, run_measured
from .readers import spread_zones
from .sinks import Sink, exactly_once_problem, postfix_tool

POSTGRESQL, SQLITE = "postgresql", "sqlite"
SLOWEST_RATE = 50  # messages or rows per second below which a command is deemed stuck


@dataclass(frozen=True)
class Plan:
    """What every measurement of a run shares."""

    server_url: str | None  # PostgreSQL server; a fresh database is made on it per size
    sink: str  # smtp-sink or aiosmtpd
    k: int  # SMTP connections: smtp-source's sessions, the ceiling's, DELIVERY_CONNECTIONS
    messages: int  # the limit's and the ceiling's message count
    dkim_key: Path | None
    workdir: Path
    build_processes: int | None = None  # --build-processes; None: the product's default

    def database_server(self, backend: str) -> str | None:
        return self.server_url if backend == POSTGRESQL else None


def timeout_for(items: int) -> float:
    """Seconds after which a command is killed: never less than ten minutes."""
    return max(600.0, items / SLOWEST_RATE)


def figures(
    usage: Usage, window: Window, items: int, sink_cpu_s: float = 0.0, unit: str = "msg"
) -> dict[str, Any]:
    """One command's figures: its rate, CPU per item, peak RSS, and the others' share of the
    window (the sink, the PostgreSQL server, and whatever else ran on the machine)."""
    wall = usage.wall_s
    ours = usage.cpu_s + sink_cpu_s + window.db_cpu_s
    return {
        "items": items,
        "wall_s": round(wall, 3),
        f"{unit}s_per_s": round(items / wall, 1),
        f"cpu_ms_per_{unit}": round(usage.per_message_ms(items), 3),
        f"db_cpu_ms_per_{unit}": round(1000 * window.db_cpu_s / max(items, 1), 3),
        "peak_rss_mb": round(usage.peak_rss_mb, 1),
        "sink_cpu_pct": round(100 * sink_cpu_s / wall, 1),
        "other_cpu_pct": round(max(0.0, 100 * (window.busy_cpu_s - ours) / window.wall_s), 1),
    }


def measured(
    command: list[str],
    *,
    env: dict[str, str],
    workdir: Path,
    name: str,
    items: int,
    postgres: bool,
    sink: Sink | None = None,
    unit: str = "msg",
) -> dict[str, Any]:
    """Run one command to its end inside a Window; its figures."""
    sink_before = sink.cpu_s() if sink else 0.0
    with Window(postgres=postgres) as window:
        usage = run_measured(
            command, env=env, cwd=workdir, log=workdir / f"{name}.log", timeout=timeout_for(items)
        )
    sink_cpu = sink.cpu_s() - sink_before if sink else 0.0
    return figures(usage, window, items, sink_cpu, unit)


def measure_import(p: product.Product, csv: Path, readers: int, postgres: bool) -> dict[str, Any]:
    """`broadside subscribers import --confirmed` of the readers' CSV file."""
    command = product.broadside(
        "subscribers", "import", "--confirmed", "--consent-source", "bench", str(csv)
    )
    result = measured(
        command,
        env=p.env(),
        workdir=p.workdir,
        name="import",
        items=readers,
        postgres=postgres,
        unit="row",
    )
    active = product.active_readers(p.database_url)
    if active != readers:
        raise RuntimeError(f"import: {active} active readers after importing {readers}")
    return result


def spread_readers(p: product.Product) -> dict[str, int]:
    """Spread the imported readers over 400 zones (not measured); how many zones they now
    live in and how many kept the service's TIMEZONE."""
    product.spread_readers(p.database_url, spread_zones(zone_names()))
    zones, unzoned = product.reader_zones(p.database_url)
    return {"zones": zones, "service_zone_readers": unzoned}


def measure_snapshot(p: product.Product, readers: int, postgres: bool) -> dict[str, Any]:
    """The product's own `daily.start_send`, timed in this process on the filled database,
    in `p`'s DELIVERY_TIMING."""
    with Window(postgres=postgres) as window:
        snapshot = product.start_send(p)
    if snapshot.total != readers:
        raise RuntimeError(f"the send snapshotted {snapshot.total} readers, expected {readers}")
    return {
        "timing": p.delivery_timing,
        "send_id": snapshot.send_id,
        "seconds": round(snapshot.seconds, 3),
        "rows_per_s": round(readers / snapshot.seconds, 1),
        "cpu_s": round(snapshot.cpu_s, 3),
        "db_cpu_s": round(window.db_cpu_s, 3),
    }


def measure_snapshots(p: product.Product, readers: int, postgres: bool) -> dict[str, Any]:
    """The snapshot of the same readers in both modes: fixed first, whose send is then
    deleted, and local (one INSERT … SELECT per zone), whose send the send path delivers.
    The local figures, with the fixed ones beside them."""
    fixed = measure_snapshot(p.timed(product.FIXED), readers, postgres)
    product.forget_send(p.database_url, fixed["send_id"])
    local = measure_snapshot(p.timed(product.LOCAL), readers, postgres)
    return local | {"fixed": fixed}


def measure_limit(plan: Plan, size: int, mail_from: str, workdir: Path) -> dict[str, Any] | None:
    """Postfix's smtp-source (C) to the sink: what the machine itself can move. None without
    Debian's postfix package."""
    source = postfix_tool("smtp-source")
    if source is None:
        return None
    with Sink(plan.sink, workdir) as sink:
        target = f"127.0.0.1:{sink.port}"
        command = [source, "-d", "-s", str(plan.k), "-l", str(size), "-m", str(plan.messages)]
        command += ["-f", mail_from, "-t", "reader@example.com", target]
        result = measured(
            command,
            env=dict(os.environ),
            workdir=workdir,
            name="limit",
            items=plan.messages,
            postgres=False,
            sink=sink,
        )
    return result


def measure_ceiling(
    plan: Plan, message: Path, mail_from: str, workdir: Path, name: str = "ceiling"
) -> dict[str, Any]:
    """aiosmtplib's sendmail() of one prebuilt column mail over K connections (bench/ceiling.py)."""
    with Sink(plan.sink, workdir) as sink:
        command = [sys.executable, "-m", "bench.ceiling", "--port", str(sink.port)]
        command += ["--k", str(plan.k), "--messages", str(plan.messages)]
        command += ["--message", str(message), "--mail-from", mail_from]
        env = {**os.environ, "PYTHONPATH": str(product.ROOT)}
        result = measured(
            command,
            env=env,
            workdir=workdir,
            name=name,
            items=plan.messages,
            postgres=False,
            sink=sink,
        )
    if sink.counts and (problem := exactly_once_problem(sink.stats, plan.messages)):
        raise RuntimeError(f"ceiling: {problem}")
    return result


def measure_send_path(
    plan: Plan, p: product.Product, send_id: int, readers: int, postgres: bool, name: str = "send"
) -> dict[str, Any]:
    """`broadside send --date 2016-02-04`: delivers the send already started, in one process,
    in `p`'s DELIVERY_TIMING, on a settled disk (product.settle). Checked through the ledger
    (N sent, none failed, done) and, with aiosmtpd, the sink's count."""
    product.settle(p.database_url)
    with Sink(plan.sink, p.workdir) as sink:
        command = product.broadside("send", "--date", product.SEED_DAY.isoformat())
        result = measured(
            command,
            env=p.env(sink.port),
            workdir=p.workdir,
            name=name,
            items=readers,
            postgres=postgres,
            sink=sink,
        )
    state = product.ledger_state(p.database_url, send_id)
    if problem := product.ledger_problem(state, readers):
        raise RuntimeError(f"send path: {problem}")
    if sink.counts and (problem := exactly_once_problem(sink.stats, readers)):
        raise RuntimeError(f"send path: {problem}")
    rate = product.delivery_rate(p.database_url, send_id)
    return result | {"ledger": state, "delivery_msgs_per_s": round(rate or 0.0, 1)}


def ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None) -> float | None:
    """One rate over another (msgs_per_s), or None when either was not measured."""
    if not numerator or not denominator:
        return None
    return round(numerator["msgs_per_s"] / denominator["msgs_per_s"], 3)


def measure_again(
    plan: Plan,
    p: product.Product,
    timing: str,
    previous_send_id: int,
    readers: int,
    postgres: bool,
    name: str,
) -> dict[str, Any]:
    """The same readers sent again in `timing` mode: the previous send and its ledger deleted,
    the send started afresh, then `broadside send` in that DELIVERY_TIMING. No ceiling of its
    own: G7 compares the modes' rates, whose ceiling is one command (goals.local_vs_fixed)."""
    again = p.timed(timing)
    product.forget_send(p.database_url, previous_send_id)
    snapshot = measure_snapshot(again, readers, postgres)
    send_path = measure_send_path(
        plan, again, snapshot["send_id"], readers, postgres, name=f"send-{name}"
    )
    return {"snapshot": snapshot, "send_path": send_path}


def measure_rounds(
    plan: Plan, p: product.Product, local_send_id: int, readers: int, postgres: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """After the local send (A): fixed, fixed, local (A B B A), so that a drift of the machine
    over the four sends (another tenant, the CPU's clock) falls on both modes alike, where one
    send per mode put all of it on one side. The first fixed send, and the second round (a
    fixed and a local one)."""
    fixed = measure_again(plan, p, product.FIXED, local_send_id, readers, postgres, "fixed")
    before = fixed["snapshot"]["send_id"]
    fixed_2 = measure_again(plan, p, product.FIXED, before, readers, postgres, "fixed-2")
    before = fixed_2["snapshot"]["send_id"]
    local_2 = measure_again(plan, p, product.LOCAL, before, readers, postgres, "local-2")
    return fixed, {"fixed": fixed_2, "local": local_2}


def measure_size(
    plan: Plan,
    backend: str,
    readers: int,
    csv: Path,
    *,
    compare: bool = False,
    baseline: bool = True,
) -> dict[str, Any]:
    """Import, spread over the zones, snapshot in both modes, limit, ceiling and send path
    (local) for N readers on a fresh database; with `compare`, the send path three more
    times: fixed, fixed, local. Without `baseline` (a comparison of the modes alone, which
    needs neither), smtp-source and the ceiling are not run."""
    postgres = backend == POSTGRESQL
    with (
        tempfile.TemporaryDirectory(prefix=f"{backend}-{readers}-", dir=plan.workdir) as tmp,
        product.fresh_database(plan.database_server(backend), Path(tmp)) as url,
    ):
        workdir = Path(tmp)
        p = product.Product(
            url, workdir, plan.k, plan.dkim_key, build_processes=plan.build_processes
        )
        product.migrate(url)
        imported = measure_import(p, csv, readers, postgres)
        zones = spread_readers(p)
        snapshot = measure_snapshots(p, readers, postgres) | zones
        message = product.column_mail(p)
        limit_figures = ceiling = None
        if baseline:
            product.settle(url)  # the import's and the snapshots' writes, before the limit
            message_file = workdir / "column.eml"
            message_file.write_bytes(message)
            mail_from = p.settings().mail_from
            limit_figures = measure_limit(plan, len(message), mail_from, workdir)
            ceiling = measure_ceiling(plan, message_file, mail_from, workdir)
        send_path = measure_send_path(plan, p, snapshot["send_id"], readers, postgres)
        fixed = again = None
        if compare:
            local_id = snapshot["send_id"]
            fixed, again = measure_rounds(plan, p, local_id, readers, postgres)
    m = {
        "backend": backend,
        "readers": readers,
        "sink": plan.sink,
        "k": plan.k,
        "message_bytes": len(message),
        "import": imported,
        "snapshot": snapshot,
        "limit": limit_figures,
        "ceiling": ceiling,
        "send_path": send_path,
        "send_vs_limit": ratio(send_path, limit_figures),
        "send_vs_ceiling": ratio(send_path, ceiling),
        "fixed": fixed,
        "again": again,  # the second round: fixed, then local
    }
    return m | {"local_vs_fixed": goals.local_vs_fixed(m)}

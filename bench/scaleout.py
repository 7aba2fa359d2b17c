"""Workers that add up: one send delivered by several `broadside worker` processes on one
PostgreSQL, against the same send delivered by one.

`broadside worker` is the product's own multi-process deployment. The bench starts the
workers first, with RESUME_INTERVAL = 1 s, waits until every one says it runs, and only then
starts the send (the snapshot): each picks it up at its next heal, within a second of the
others, so several workers are not compared after staggered start-ups of several seconds
each. Workers never exit by themselves, so the bench watches the ledger until every reader
is sent and then stops them with SIGTERM, as an operator would. The rate is read from the
ledger's `sent_at` stamps (first to last).

Two figures: (a) two workers against one at K connections each, against the run's sink: the
CPU-bound case, on 2 cores; (b) three workers with K = 4 each against one, against bench/sink.py
answering each DATA after 50 ms (a remote relay's latency), with every reader counted once
by the sink: the network-bound case.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import product
from .measure import Plan, measure_import, timeout_for
from .procs import Usage, Watched, Window
from .readers import write_readers_csv
from .sinks import AIOSMTPD, Sink, exactly_once_problem

HEAL_SECONDS = 1  # RESUME_INTERVAL for the bench's workers: they find a new send at once
READY = "worker running"  # what `broadside worker` prints once it runs
READY_SECONDS = 60.0


@dataclass(frozen=True)
class Scenario:
    """One scale-out comparison: `many` workers against one, each with `k` connections."""

    name: str
    readers: int
    many: int
    k: int
    sink: str
    data_delay: float = 0.0


def scenarios(plan: Plan, quick: bool) -> list[Scenario]:
    """(a) two workers at the run's K against the run's sink; (b) three at K = 4 against a
    sink that answers each DATA after 50 ms. Sizes modest: the default run stays short."""
    a, b = (3_000, 1_000) if quick else (20_000, 4_000)
    return [
        Scenario("two_workers", a, many=2, k=plan.k, sink=plan.sink),
        Scenario("three_workers_slow_relay", b, many=3, k=4, sink=AIOSMTPD, data_delay=0.05),
    ]


def start_workers(p: product.Product, sink: Sink, count: int) -> list[Watched]:
    """`count` workers that look for unfinished sends every second, once all are running."""
    env = p.env(sink.port) | {
        "BROADSIDE_RESUME_INTERVAL": str(HEAL_SECONDS),
        "BROADSIDE_LOG_LEVEL": "INFO",  # their story, if one fails
    }
    command = product.broadside("worker")
    workers = [
        Watched(command, env=env, cwd=p.workdir, log=p.workdir / f"worker-{i}.log")
        for i in range(count)
    ]
    deadline = time.monotonic() + READY_SECONDS
    while not all(READY in w.tail(50) for w in workers):
        if time.monotonic() > deadline or not all(w.running() for w in workers):
            for worker in workers:
                worker.stop()
            tails = "\n".join(w.tail() for w in workers)
            raise RuntimeError(f"the workers did not start:\n{tails}")
        time.sleep(0.1)
    return workers


def run_workers(
    p: product.Product, sink: Sink, count: int, readers: int
) -> tuple[int, list[Usage], Window]:
    """Start `count` workers and wait until all are running, then start the send (they pick
    it up at their next heal, within a second of each other); wait until the ledger shows
    every reader sent and stop them. The send's id, their usage and the window."""
    workers = start_workers(p, sink, count)

    def check() -> None:
        for worker in workers:
            if not worker.running():
                raise RuntimeError(f"a worker exited early:\n{worker.tail()}")

    try:
        with Window(postgres=True) as window:
            send_id = product.start_send(p).send_id
            state = product.wait_until_sent(
                p.database_url, send_id, readers, timeout_for(readers), check
            )
    finally:
        usages = [worker.stop() for worker in workers]
    if problem := product.ledger_problem(state, readers):
        tails = "\n".join(f"worker {i}:\n{w.tail()}" for i, w in enumerate(workers))
        raise RuntimeError(f"{count} worker(s): {problem}\n{tails}")
    return send_id, usages, window


def deliver_with(plan: Plan, scenario: Scenario, workers: int, csv: Path) -> dict[str, Any]:
    """One send of `scenario.readers` delivered by `workers` processes, on a fresh database."""
    server = plan.database_server("postgresql")
    readers = scenario.readers
    with (
        tempfile.TemporaryDirectory(prefix=f"{scenario.name}-{workers}-", dir=plan.workdir) as tmp,
        product.fresh_database(server, Path(tmp)) as url,
    ):
        p = product.Product(
            url, Path(tmp), scenario.k, plan.dkim_key, build_processes=plan.build_processes
        )
        product.migrate(url)
        measure_import(p, csv, readers, postgres=True)
        product.settle(url)
        with Sink(scenario.sink, p.workdir, scenario.data_delay) as sink:
            send_id, usages, window = run_workers(p, sink, workers, readers)
        if sink.counts and (problem := exactly_once_problem(sink.stats, readers)):
            raise RuntimeError(f"{scenario.name}, {workers} worker(s): {problem}")
        rate = product.delivery_rate(url, send_id) or readers / window.wall_s
    return {
        "workers": workers,
        "msgs_per_s": round(rate, 1),
        "wall_s": round(window.wall_s, 3),
        "cpu_ms_per_msg": round(1000 * sum(u.cpu_s for u in usages) / readers, 3),
        "db_cpu_ms_per_msg": round(1000 * window.db_cpu_s / readers, 3),
        "peak_rss_mb": round(max(u.peak_rss_mb for u in usages), 1),
        "counted_by_sink": sink.counts,  # and then checked above: every reader once
    }


def measure_scenario(plan: Plan, scenario: Scenario) -> dict[str, Any]:
    """One worker, then `many`, on the same N: both rates and their ratio."""
    with tempfile.TemporaryDirectory(prefix="readers-", dir=plan.workdir) as tmp:
        csv = write_readers_csv(Path(tmp) / "readers.csv", scenario.readers)
        one = deliver_with(plan, scenario, 1, csv)
        many = deliver_with(plan, scenario, scenario.many, csv)
    return {
        "scenario": scenario.name,
        "readers": scenario.readers,
        "k": scenario.k,
        "sink": scenario.sink,
        "data_delay_s": scenario.data_delay,
        "one": one,
        "many": many,
        "speedup": round(many["msgs_per_s"] / one["msgs_per_s"], 3),
    }


def measure_scale_out(plan: Plan, quick: bool) -> dict[str, dict[str, Any]]:
    """Both scale-out figures, keyed by scenario name (PostgreSQL only: SQLite has one writer)."""
    return {s.name: measure_scenario(plan, s) for s in scenarios(plan, quick)}

"""`make bench`: Broadside's send path against the machine's SMTP limit and aiosmtplib's own
ceiling, in one run, with every goal of issues 15 and 16 judged at the end.

Per database and size N, back to back against a fresh sink (Postfix's smtp-sink by default):

  limit      Postfix's smtp-source (C) -> the sink: what the machine can move at all
  ceiling    aiosmtplib's sendmail() of one prebuilt, signed column mail over K connections
  send path  `broadside send` of the seed column to N readers, personalised and DKIM-signed

each over 20,000 messages (the send path: N), each measured from outside as a whole command
(messages/s, CPU ms per message, peak RSS). Before them, the N readers are imported with
`broadside subscribers import --confirmed` (rows/s, peak RSS), spread over 400 time zones, and
the send is started with the product's own `daily.start_send` (the snapshot, timed in both
DELIVERY_TIMING modes; the local one is sent). Sizes up to --compare (15,000) then send the
same readers three more times: fixed, fixed, local (G7, the modes' mean rates, which share one
ceiling); a run of larger sizes only compares at 15,000 on a database of its own, without the
limit and the ceiling. Then the scale-out figures (several `broadside worker`
processes on one PostgreSQL) and POST /subscribe (bench/web.py).

    python -m bench.send                     # N = 100,000 on SQLite and PostgreSQL (< 15 min)
    python -m bench.send --million           # N = 10,000 and 1,000,000
    python -m bench.send --quick             # a smoke run: N = 2,000
    python -m bench.send --backend sqlite --sink aiosmtpd --no-dkim --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy.exc import SQLAlchemyError

from service.config import ENV_PREFIX
from service.mail import dkim as dkim_signing

from . import goals
from .measure import POSTGRESQL, SQLITE, Plan, measure_size
from .product import ROOT, postgres_server, postgres_version
from .readers import write_readers_csv
from .scaleout import measure_scale_out
from .sinks import AIOSMTPD, SMTP_SINK, choose_sink

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_SIZES, MILLION_SIZES, QUICK_SIZES = [100_000], [10_000, 1_000_000], [2_000]
MESSAGES, QUICK_MESSAGES = 20_000, 2_000  # the limit's and the ceiling's
WEB_SECONDS, QUICK_WEB_SECONDS, WEB_CONNECTIONS = 30, 5, 16
DEFAULT_K = 16  # where the reference kit found the ceiling (shared/PERFORMANCE.md)
# The largest N also sent in fixed mode (G7): a second send at 100,000 on both databases
# would take the default run past its 15 minutes, so it compares at 15,000 instead: four
# sends per database, which at 20,000 would keep the run at ~15.5 minutes where RSA signs
# ~1,000 times a second (docs/BENCHMARKS.md).
COMPARE_READERS = 15_000
# Fewer readers than this send in well under a second: their rate says nothing about G7.
MIN_COMPARE = 1_000


# ---------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.send", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--backend", choices=[SQLITE, POSTGRESQL, "both"], default="both")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_SERVER,
        help="the PostgreSQL server; a fresh database is made on it per measurement and dropped",
    )
    parser.add_argument("--sink", choices=[SMTP_SINK, AIOSMTPD], default=SMTP_SINK)
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="SMTP connections, everywhere")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--million", action="store_true", help="N = 10,000 and 1,000,000")
    size.add_argument("--quick", action="store_true", help="a smoke run: N = 2,000")
    size.add_argument("--readers", type=int, help="one size N of your choosing")
    parser.add_argument("--messages", type=int, help="limit and ceiling (default 20,000)")
    parser.add_argument(
        "--compare",
        type=int,
        default=COMPARE_READERS,
        metavar="N",
        help=(
            f"sizes up to N are sent in fixed mode too (G7); without one, a comparison at N;"
            f" 0: none (default {COMPARE_READERS:,}, at least {MIN_COMPARE:,})"
        ),
    )
    parser.add_argument(
        "--no-dkim", dest="dkim", action="store_false", help="send unsigned (default RSA-2048)"
    )
    parser.add_argument(
        "--build-processes",
        type=int,
        metavar="N",
        help="DELIVERY_BUILD_PROCESSES for every send (default: the product's own, 1)",
    )
    parser.add_argument("--scale-out", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--web", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.build_processes is not None and args.build_processes < 0:
        parser.error("--build-processes must be 0 or more")
    if args.k < 1 or (args.readers is not None and args.readers < 1):
        parser.error("--k and --readers must be positive")
    if args.compare and args.compare < MIN_COMPARE:
        parser.error(f"--compare must be 0 (no comparison) or at least {MIN_COMPARE:,} readers")
    args.sizes = sizes_for(args)
    args.messages = args.messages or (QUICK_MESSAGES if args.quick else MESSAGES)
    return args


def sizes_for(args: argparse.Namespace) -> list[int]:
    """The sizes N the options ask for."""
    if args.quick:
        return QUICK_SIZES
    if args.million:
        return MILLION_SIZES
    return [args.readers] if args.readers else DEFAULT_SIZES


def backends(args: argparse.Namespace) -> list[str]:
    """The databases to measure; PostgreSQL is dropped with a warning when `both` was asked
    and the server does not answer (asked alone, it must answer)."""
    if args.backend == SQLITE:
        return [SQLITE]
    try:
        args.postgresql_version = postgres_version(args.database_url)
    except SQLAlchemyError as exc:
        if args.backend == POSTGRESQL:
            raise SystemExit(f"PostgreSQL at {args.database_url} does not answer: {exc}") from None
        print(f"warning: PostgreSQL does not answer ({exc}); measuring SQLite only", flush=True)
        return [SQLITE]
    return [SQLITE, POSTGRESQL] if args.backend == "both" else [POSTGRESQL]


def dkim_key(args: argparse.Namespace, keys: Path) -> Path | None:
    """A fresh RSA-2048 key for this run (what the deliverability issue signs with)."""
    if not args.dkim:
        return None
    path = keys / "bench.pem"
    dkim_signing.write_key(dkim_signing.new_key("rsa"), path)
    return path


def measure_sizes(
    plan: Plan, names: list[str], sizes: list[int], compare: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every size on every database, those up to `compare` readers sent in fixed mode too;
    when none was, a comparison of both modes at `compare` on each database (without the
    limit); with `compare` 0, none. The sizes and the comparisons; one progress line each."""
    found = []
    for readers in sizes:
        with tempfile.TemporaryDirectory(prefix="readers-", dir=plan.workdir) as tmp:
            csv = write_readers_csv(Path(tmp) / "readers.csv", readers)
            for backend in names:
                m = measure_size(plan, backend, readers, csv, compare=readers <= compare)
                print(progress_line(m), flush=True)
                found.append(m)
    if not compare or any(readers <= compare for readers in sizes):
        return found, []
    comparisons = []
    with tempfile.TemporaryDirectory(prefix="readers-", dir=plan.workdir) as tmp:
        csv = write_readers_csv(Path(tmp) / "readers.csv", compare)
        for backend in names:
            m = measure_size(plan, backend, compare, csv, compare=True, baseline=False)
            print(f"comparison {progress_line(m)}", flush=True)
            comparisons.append(m)
    return found, comparisons


def measure_web(args: argparse.Namespace, names: list[str]) -> tuple[dict[str, Any], str]:
    """POST /subscribe per database through bench/web.py (`make bench-web`), when it exists;
    the figures, and what to say for a database without them."""
    if not args.web:
        return {}, "--web"
    try:
        from . import web  # written apart; the goal shows "not measured" without it
    except ImportError:
        return {}, "make bench-web"
    seconds = QUICK_WEB_SECONDS if args.quick else WEB_SECONDS
    results: dict[str, Any] = {}
    for backend in names:
        # measure() takes None for SQLite, else the server it makes its own database on.
        server = postgres_server(args.database_url) if backend == POSTGRESQL else None
        try:
            results[backend] = web.measure(server, seconds=seconds, connections=WEB_CONNECTIONS)
        except (Exception, SystemExit) as exc:  # wrk missing, say: keep the run's other figures
            results[backend] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"web {backend}: {results[backend]}", flush=True)
    return results, "make bench-web"


# ---------------------------------------------------------------- what is printed


def _rate(figures: dict[str, Any] | None) -> str:
    return f"{figures['msgs_per_s']:,.0f}" if figures else "–"


def later_sends(m: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The sends of the same readers after the first (local) one, in their order (G7)."""
    again = m.get("again") or {}
    found = [("fixed", m["fixed"]), ("fixed, 2nd", again.get("fixed"))]
    return [(what, each) for what, each in [*found, ("local, 2nd", again.get("local"))] if each]


def progress_line(m: dict[str, Any]) -> str:
    """One measurement on one line, as it finishes."""
    i, s, send = m["import"], m["snapshot"], m["send_path"]
    line = (
        f"{m['backend']} N={m['readers']:,}: import {i['rows_per_s']:,.0f} rows/s"
        f" ({i['peak_rss_mb']:.0f} MB) · snapshot {s['seconds']:.2f} s over {s['zones']} zones"
        f" (fixed mode {s['fixed']['seconds']:.2f} s)"
    )
    if m["ceiling"]:  # not run in a comparison of the modes alone
        line += f" · limit {_rate(m['limit'])} · ceiling {_rate(m['ceiling'])}"
    line += f" · send path {_rate(send)} msg/s (delivery alone {send['delivery_msgs_per_s']:,.0f}),"
    if m["ceiling"]:
        line += (
            f" {goals.share_cell(m['send_vs_limit'])} × limit,"
            f" {goals.share_cell(m['send_vs_ceiling'])} × ceiling,"
        )
    line += f" {send['cpu_ms_per_msg']:.2f} ms CPU/msg, {send['peak_rss_mb']:.0f} MB"
    for what, each in later_sends(m):
        line += (
            f" · {what}: send path {_rate(each['send_path'])} msg/s (delivery alone"
            f" {each['send_path']['delivery_msgs_per_s']:,.0f})"
        )
    if m["fixed"]:
        line += f"; local/fixed {goals.share_cell(m['local_vs_fixed'])}"
    return line


def commands(m: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, str]]:
    """A measurement's commands, each with its figures and the unit they count."""
    found = [
        ("import", m["import"], "row"),
        ("limit", m["limit"], "msg"),
        ("ceiling", m["ceiling"], "msg"),
        ("send path", m["send_path"], "msg"),
    ]
    found += [(f"send path ({what})", each["send_path"], "msg") for what, each in later_sends(m)]
    return found


def detail_table(sizes: list[dict[str, Any]]) -> str:
    """Every command's figures: the table to read a ratio by (who used the CPUs meanwhile).
    `(fixed)`, `(fixed, 2nd)` and `(local, 2nd)` mark the send paths that followed the
    first (local) one, in that order."""
    lines = [
        "| backend | N | what | rate /s | CPU ms per item | DB server CPU ms per item |"
        " sink CPU % | other load CPU % | peak RSS MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sizes:
        for what, f, unit in commands(m):
            if f is None:
                continue
            lines.append(
                f"| {m['backend']} | {m['readers']:,} | {what} |"
                f" {f[f'{unit}s_per_s']:,.0f} | {f[f'cpu_ms_per_{unit}']:.3f} |"
                f" {f[f'db_cpu_ms_per_{unit}']:.3f} | {f['sink_cpu_pct']:.0f} |"
                f" {f['other_cpu_pct']:.0f} | {f['peak_rss_mb']:.1f} |"
            )
    return "\n".join(lines)


def scale_out_lines(scale_out: dict[str, Any]) -> list[str]:
    lines = []
    for s in scale_out.values():
        one, many = s["one"], s["many"]
        lines.append(
            f"{s['scenario']} (N={s['readers']:,}, K={s['k']}, {s['sink']},"
            f" DATA delay {s['data_delay_s']} s): 1 worker {one['msgs_per_s']:,.0f} msg/s,"
            f" {many['workers']} workers {many['msgs_per_s']:,.0f} msg/s = {s['speedup']:.2f} ×;"
            f" CPU {one['cpu_ms_per_msg']:.2f} / {many['cpu_ms_per_msg']:.2f} ms/msg"
            f" (+DB {one['db_cpu_ms_per_msg']:.2f} / {many['db_cpu_ms_per_msg']:.2f})"
        )
    return lines


def commit() -> str:
    """The checked-out commit (read only; "unknown" outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
        "aiosmtplib": aiosmtplib.__version__,
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": os.getloadavg(),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['date']}, commit {report['commit']}, {report['machine']['cpu_model']},")
    print(
        f"{report['machine']['nproc']} CPUs; sink {report['sink']}, K={report['k']},"
        f" {'DKIM RSA-2048' if report['dkim'] else 'unsigned'}\n"
    )
    print(detail_table(report["sizes"] + report["comparisons"]))
    if report["scale_out"]:
        print("\n" + "\n".join(scale_out_lines(report["scale_out"])))
    print("\nResults (docs/BENCHMARKS.md):\n")
    print(goals.RESULTS_HEADER)
    for m in report["sizes"]:
        print(goals.results_row(m, report["date"], report["commit"]))
    print("\nGoals (issues 15 and 16):\n")
    print(goals.goals_table(goals.verdicts(report)))
    print(f"\ntotal {report['seconds']:.0f} s")


# ---------------------------------------------------------------- command line


def measure_all(args: argparse.Namespace, sink: str, names: list[str]) -> dict[str, Any]:
    """Every size on every database, then the scale-out figures, in one temporary directory
    (databases, logs, the run's DKIM key); the part of the report they make."""
    with tempfile.TemporaryDirectory(prefix="broadside-bench-") as tmp:
        workdir = Path(tmp)
        plan = Plan(
            server_url=args.database_url,
            sink=sink,
            k=args.k,
            messages=args.messages,
            dkim_key=dkim_key(args, workdir),
            workdir=workdir,
            build_processes=args.build_processes,
        )
        sizes, comparisons = measure_sizes(plan, names, args.sizes, args.compare)
        scale_out = None
        if args.scale_out and POSTGRESQL in names:
            scale_out = measure_scale_out(plan, args.quick)
            print("\n".join(scale_out_lines(scale_out)), flush=True)
    return {"sizes": sizes, "comparisons": comparisons, "scale_out": scale_out}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        del os.environ[name]  # the developer's own settings must not leak into the bench
    sink, warning = choose_sink(args.sink)
    if warning:
        print(warning, flush=True)
    names = backends(args)
    report: dict[str, Any] = {
        "argv": sys.argv,
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "backends": names,
        "sink": sink,
        "k": args.k,
        "dkim": args.dkim,
        "messages": args.messages,
        "compare": args.compare,
        "machine": machine(),
        "postgresql": getattr(args, "postgresql_version", None),
    }
    print(
        f"{', '.join(names)}; N = {', '.join(f'{n:,}' for n in args.sizes)}; sink {sink};"
        f" K={args.k}; {'DKIM RSA-2048' if args.dkim else 'unsigned'}",
        flush=True,
    )
    started = time.perf_counter()
    report |= measure_all(args, sink, names)
    report["web"], report["web_note"] = measure_web(args, names)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["goals"] = [vars(v) for v in goals.verdicts(report)]
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

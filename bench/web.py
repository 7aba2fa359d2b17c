"""The web benchmark: `POST /subscribe` under wrk against one `broadside serve` (one uvicorn
worker), on a fresh SQLite file and on a fresh PostgreSQL database.

Each run migrates a new database, starts the server with the subscribe rate limits raised
out of the way (the limits are still counted on every request, as in production) and a
relay for its outbox sender (Postfix's smtp-sink when installed, else bench/sink.py), then
runs `wrk -t2 -cC -dS --latency -s bench/subscribe.lua`, which posts the form with a new
address each time. Afterwards the outbox must hold one confirmation per accepted request,
and the server must have sent them all, during the run or within `max(S, 30)` seconds after
it (the line says how many went during the run): a benchmark that silently dropped work, or
left it queued, would be measuring nothing.

    python -m bench.web                           # SQLite and PostgreSQL, 30 s each
    python -m bench.web --seconds 10 --backend sqlite
    python -m bench.web --postgres postgresql://postgres@127.0.0.1:5432/postgres

Goal (issue 15, goal 6): >= 1,000 requests/s with p99 <= 50 ms at 16 connections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "subscribe.lua"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_RATE = 1000.0  # requests/s
GOAL_P99_MS = 50.0
RAISED_LIMIT = "1000000000"  # per hour and per day: counted, never reached
START_TIMEOUT = 30.0
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def measure(database: str | None, seconds: int = 30, connections: int = 16) -> dict[str, Any]:
    """One wrk run against `broadside serve` on a fresh database: SQLite when `database` is
    None, else a new PostgreSQL database created on the server `database` names (and
    dropped afterwards). Keys: requests_per_s, p50_ms, p99_ms, errors (non-2xx/3xx answers
    plus socket errors), and the details (accepted, outbox, backend, ...)."""
    with _database(database) as url, _sink() as relay, tempfile.TemporaryDirectory() as var:
        env = _server_env(url, relay, Path(var))
        _broadside(env, "db", "upgrade")
        port = _free_port()
        with _server(env, port):
            output = _wrk(port, seconds, connections)
            sending = _outbox_drained(url, patience=max(float(seconds), 30.0))
        result = {**parse_wrk(output), "connections": connections, **sending}
        result.update(_outcome(url, result))
        result["backend"] = make_url(url).get_backend_name()
        result["seconds"] = seconds
        return result


def parse_wrk(output: str) -> dict[str, Any]:
    """requests_per_s, p50_ms, p99_ms, non_2xx, socket_errors, requests from wrk --latency."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"wrk gave no figures:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(n) for n in sockets.groups()) if sockets else 0
    return {
        "requests_per_s": float(rate.group(1)),
        "p50_ms": _percentile(output, "50"),
        "p99_ms": _percentile(output, "99"),
        "requests": int(total.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket_errors,
        "timeouts": int(sockets.group(4)) if sockets else 0,
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + socket_errors,
    }


def _percentile(output: str, which: str) -> float:
    found = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk gave no {which}th percentile (run it with --latency)")
    return float(found.group(1)) * UNITS_MS[found.group(2)]


def _outbox_drained(url: str, patience: float) -> dict[str, Any]:
    """How many confirmations the server had sent when wrk stopped, and how long the rest
    took (up to `patience` seconds): the confirmation mail goes through the outbox, and a
    rate bought by leaving the mails queued would not be the product's."""
    engine = create_engine(url)
    count = text(
        "SELECT sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END),"
        " sum(CASE WHEN status IN ('pending', 'sending') THEN 1 ELSE 0 END) FROM outbox"
    )
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            sent_by_end, unsent = (int(n or 0) for n in conn.execute(count).one())
        while unsent and time.monotonic() - started < patience:
            time.sleep(0.2)
            with engine.connect() as conn:
                unsent = int(conn.execute(count).one()[1] or 0)
    finally:
        engine.dispose()
    return {
        "outbox_sent_by_end": sent_by_end,
        "outbox_unsent": unsent,
        "outbox_drain_s": round(time.monotonic() - started, 1),
    }


def _outcome(url: str, result: dict[str, Any]) -> dict[str, Any]:
    """What the database says was done: one pending reader and one queued confirmation per
    accepted request. A request wrk gave up on (timeout) may still have been done."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            outbox = conn.execute(text("SELECT count(*) FROM outbox WHERE kind = 'confirm'"))
            readers = conn.execute(text("SELECT count(*) FROM subscribers"))
            counts = {"outbox": outbox.scalar_one(), "readers": readers.scalar_one()}
    finally:
        engine.dispose()
    accepted = result["requests"] - result["non_2xx"]
    # wrk counts the answers it read before the end; the last request of each connection
    # may have been done without its answer being counted, and so may one it gave up on.
    low, high = accepted, accepted + result["connections"] + result["timeouts"]
    lost = not (low <= counts["outbox"] <= high and counts["readers"] == counts["outbox"])
    return {**counts, "accepted": accepted, "work_lost": lost}


@contextlib.contextmanager
def _database(postgres: str | None) -> Iterator[str]:
    if postgres is None:
        with tempfile.TemporaryDirectory(prefix="broadside-benchweb-") as folder:
            yield f"sqlite:///{folder}/web.db"
        return
    name = f"broadside_benchweb_{secrets.token_hex(4)}"
    server = create_engine(postgres, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(postgres).set(database=name).render_as_string(hide_password=False)
        finally:
            with server.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        server.dispose()


@contextlib.contextmanager
def _sink() -> Iterator[str]:
    """An SMTP relay for the outbox sender that swallows everything, in its own process."""
    port = _free_port()
    tool = shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink") if Path(p).exists()),
        None,
    )
    if tool is not None:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        command = [tool, *user, f"127.0.0.1:{port}", "1024"]
    else:
        print(
            "warning: smtp-sink not found (Debian: postfix); using bench/sink.py", file=sys.stderr
        )
        command = [sys.executable, "-m", "bench.sink", "--port", str(port)]
    sink = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_for_port(port, sink)
        yield f"smtp://127.0.0.1:{port}"
    finally:
        _stop(sink)


def _server_env(url: str, relay: str, var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADSIDE_")}
    env.update(
        BROADSIDE_ENV="production",  # as operators run it (development re-reads templates)
        BROADSIDE_DATABASE_URL=url,
        BROADSIDE_SECRET_KEY=secrets.token_hex(32),
        BROADSIDE_VAR_DIR=str(var),
        BROADSIDE_SMTP_URL=relay,
        BROADSIDE_LOG_LEVEL="WARNING",
        BROADSIDE_SUBSCRIBE_PER_IP_PER_HOUR=RAISED_LIMIT,
        BROADSIDE_SUBSCRIBE_PER_ADDRESS_PER_HOUR=RAISED_LIMIT,
        BROADSIDE_SUBSCRIBE_PER_ADDRESS_PER_DAY=RAISED_LIMIT,
    )
    return env


def _broadside(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"broadside {' '.join(args)} failed:\n{done.stderr.decode()}")


@contextlib.contextmanager
def _server(env: dict[str, str], port: int) -> Iterator[None]:
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--port",
        str(port),
        "--no-scheduler",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_for_health(port, server)
        yield
    finally:
        _stop(server)


def _wrk(port: int, seconds: int, connections: int) -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    threads = min(2, connections)
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}/subscribe",
    ]
    env = {
        **os.environ,
        "BENCH_RUN": secrets.token_hex(3),
        "BENCH_ORIGIN": f"http://127.0.0.1:{port}",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT} s")


def _wait_for_health(port: int, process: subprocess.Popen[bytes]) -> None:
    _wait_for_port(port, process)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        if answer.status != 200:
            raise RuntimeError(f"/healthz answered {answer.status}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report(name: str, result: dict[str, Any]) -> str:
    """One line per backend, with met/not met against the goal."""
    unsent = result.get("outbox_unsent", 0)
    met = (
        result["requests_per_s"] >= GOAL_RATE
        and result["p99_ms"] <= GOAL_P99_MS
        and result["errors"] == 0
        and not result["work_lost"]
        and not unsent
    )
    if "outbox_sent_by_end" not in result:
        sending = ""
    elif unsent:
        sending = f", {unsent:,} still unsent {result['outbox_drain_s']:.0f} s later"
    else:
        sending = (
            f", {result['outbox_sent_by_end']:,} sent by the end,"
            f" the rest {result['outbox_drain_s']:.1f} s later"
        )
    return (
        f"{name:<10} {result['requests_per_s']:>8,.0f} req/s  p50 {result['p50_ms']:6.1f} ms"
        f"  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']} (non-2xx/3xx"
        f" {result['non_2xx']}, socket {result['socket_errors']})  outbox {result['outbox']:,}"
        f" for {result['accepted']:,} accepted{sending}"
        f"{'  WORK LOST' if result['work_lost'] else ''}"
        f"  -> goal (>= {GOAL_RATE:,.0f} req/s, p99 <= {GOAL_P99_MS:.0f} ms):"
        f" {'met' if met else 'not met'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--postgres", default=POSTGRES, help="server to create the database on")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    runs = {"sqlite": None, "postgresql": args.postgres}
    if args.backend != "both":
        runs = {args.backend: runs[args.backend]}
    print(
        f"POST /subscribe, one uvicorn worker, wrk -t2 -c{args.connections} -d{args.seconds}s,"
        f" load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = {}
    for name, database in runs.items():
        results[name] = measure(database, args.seconds, args.connections)
        print(report(name, results[name]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

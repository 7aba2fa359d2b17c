"""The SMTP sinks the bench sends to: Postfix's smtp-sink (C, the default) or bench/sink.py.

smtp-sink costs a fraction of what any Python client does, so the figures measure the client
and never the sink; it cannot count recipients, so with it a send is checked through the
ledger. bench/sink.py (aiosmtpd) costs about as much CPU as the client, but counts every
recipient, and can answer each DATA late like a remote relay: the scale-out figure uses it to
see every reader exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .procs import Usage, Watched, cpu_seconds, free_port, wait_for_greeting

ROOT = Path(__file__).resolve().parent.parent
SMTP_SINK, AIOSMTPD = "smtp-sink", "aiosmtpd"
# Debian installs Postfix's tools in /usr/sbin, which is not on every user's PATH.
POSTFIX_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/lib/postfix/sbin"]
)
SMTP_SINK_BACKLOG = "1024"


def postfix_tool(name: str) -> str | None:
    """The path of smtp-sink or smtp-source, if Debian's postfix package is installed."""
    return shutil.which(name, path=POSTFIX_PATH)


def choose_sink(requested: str) -> tuple[str, str | None]:
    """The sink to use and, when it is not the one asked for, the warning to print."""
    if requested == SMTP_SINK and postfix_tool("smtp-sink") is None:
        return AIOSMTPD, (
            "warning: Postfix's smtp-sink is not installed (Debian: apt-get install postfix);"
            " falling back to bench/sink.py (aiosmtpd), which halves what a 2-core machine can"
            " show, and the machine limit is not measured"
        )
    return requested, None


def sink_command(kind: str, port: int, stats: Path, data_delay: float) -> list[str]:
    """The command line that starts a sink of `kind` on `port`."""
    if kind == SMTP_SINK:
        tool = postfix_tool("smtp-sink")
        assert tool is not None, "choose_sink() falls back when smtp-sink is missing"
        # As root it must be told whose privileges to drop to, or it refuses to run.
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return [tool, *user, f"127.0.0.1:{port}", SMTP_SINK_BACKLOG]
    command = [sys.executable, "-m", "bench.sink", "--port", str(port), "--stats", str(stats)]
    return [*command, "--data-delay", str(data_delay)] if data_delay else command


class Sink:
    """A sink in its own process for one measurement. Inside the `with`, `cpu_s()` reads its
    CPU so far; after it, `usage` is what it cost and `stats` what it counted (aiosmtpd)."""

    def __init__(self, kind: str, workdir: Path, data_delay: float = 0.0) -> None:
        if data_delay and kind != AIOSMTPD:
            raise ValueError("only bench/sink.py (aiosmtpd) can delay its DATA replies")
        self.kind = kind
        self.port = free_port()
        self.stats_path = workdir / f"sink-{self.port}.json"
        self._command = sink_command(kind, self.port, self.stats_path, data_delay)
        self._log = workdir / f"sink-{self.port}.log"
        self._env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.stats: dict[str, Any] = {}
        self.usage: Usage | None = None

    def __enter__(self) -> Sink:
        self._process = Watched(self._command, env=self._env, cwd=ROOT, log=self._log)
        try:
            wait_for_greeting(self.port)
        except RuntimeError:
            self._process.stop()
            tail = self._process.tail()
            raise RuntimeError(f"the {self.kind} sink did not start:\n{tail}") from None
        return self

    def cpu_s(self) -> float:
        """The sink's CPU seconds so far (read before and after a window)."""
        return cpu_seconds(self._process.pid, children=False)

    def __exit__(self, *_exc: object) -> None:
        self.usage = self._process.stop()
        if self.stats_path.exists():
            self.stats = json.loads(self.stats_path.read_text())

    @property
    def counts(self) -> bool:
        """Whether this sink counts recipients (aiosmtpd does; smtp-sink cannot)."""
        return self.kind == AIOSMTPD


def exactly_once_problem(stats: dict[str, Any], readers: int) -> str | None:
    """Why the sink's count is not one message for each of `readers` readers; None if it is."""
    got = (stats.get("messages"), stats.get("unique_recipients"), stats.get("duplicate_deliveries"))
    if got == (readers, readers, 0):
        return None
    return (
        f"the sink received {got[0]} messages for {got[1]} recipients ({got[2]} duplicates);"
        f" expected {readers} for {readers}, no duplicates"
    )

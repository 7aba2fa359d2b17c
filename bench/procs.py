"""Run a command and measure it from outside: wall time, CPU (its own and its children's), peak RSS.

Every figure of the bench is taken this way, for C and Python commands alike, so that the
limit, the ceiling and the send path are read with one ruler. CPU comes from the kernel's own
accounting when the process is reaped (`wait4`: user + system time of the process and of the
children it waited for). Peak RSS is the VmHWM line of /proc/PID/status, polled every 20 ms
until the exit: /proc/PID is gone once the process is reaped, and `wait4`'s ru_maxrss cannot
stand in for it, since Linux folds in the high-water mark of the memory the child had before
its exec, a copy of this bench process (every command would seem to need ~100 MB). A
process with children (`broadside send` and its builder processes) counts their resident sets
with its own: the peak is of the sum.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.02
CHILD_SCAN_SECONDS = 0.5


@dataclass(frozen=True)
class Usage:
    """What one process cost, measured from outside."""

    wall_s: float
    cpu_s: float  # user + system, the process and the children it waited for
    peak_rss_mb: float
    exit_code: int

    def per_message_ms(self, messages: int) -> float:
        """CPU milliseconds per message."""
        return 1000 * self.cpu_s / max(messages, 1)


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (a scan of /proc/*/stat for their parent)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The parent is the 2nd field after the command's closing ")".
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def status_kb(pid: int, field: str) -> int:
    """A memory line of /proc/PID/status (VmHWM, VmRSS) in KiB; 0 when it cannot be read."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of a live process from /proc/PID/stat (with `children`, also
    the CPU of the children it has reaped: how a PostgreSQL server keeps its exited backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def postgres_cpu_seconds() -> float:
    """CPU seconds of every local PostgreSQL process, the exited backends included (in the
    postmaster's children's time). Another session using the same server counts too."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (anything but idle and I/O wait), from /proc/stat: the
    machine's whole load, to tell our cost from other sessions' noise."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Watched:
    """A started command whose resident set is sampled until it is reaped with `finish`."""

    def __init__(
        self, command: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.command = list(command)
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.perf_counter()
        self.peak_kb = 0
        self._children: list[int] = []
        self._next_scan = 0.0
        self.usage: Usage | None = None  # set once reaped

    @property
    def pid(self) -> int:
        return self.process.pid

    def sample(self) -> None:
        """Note the resident high-water mark (VmHWM; VmRSS where the kernel lacks it; the
        exec'd program's own: a new address space starts a new mark), or the resident set of
        the process and its children together (the send's builder processes), if larger."""
        own = max(status_kb(self.pid, "VmHWM"), status_kb(self.pid, "VmRSS"))
        if time.monotonic() >= self._next_scan:  # a scan of /proc is too dear for every sample
            self._children = children_of(self.pid)
            self._next_scan = time.monotonic() + CHILD_SCAN_SECONDS
        children = sum(status_kb(child, "VmRSS") for child in self._children)
        if children:
            own = max(own, status_kb(self.pid, "VmRSS") + children)
        self.peak_kb = max(self.peak_kb, own)

    def reap(self, *, block: bool) -> Usage | None:
        """The usage once the process has exited (None while it runs and `block` is False).
        Only this reaps it (never Popen.poll/wait, which would take the exit and its CPU)."""
        if self.usage is not None:
            return self.usage
        self.sample()
        pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        wall = time.perf_counter() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        self.usage = Usage(
            wall_s=wall,
            cpu_s=rusage.ru_utime + rusage.ru_stime,
            peak_rss_mb=self.peak_kb / 1024,
            exit_code=self.process.returncode,
        )
        return self.usage

    def running(self) -> bool:
        """Whether the process still runs (sampling its memory meanwhile)."""
        return self.reap(block=False) is None

    def wait(self, timeout: float) -> Usage:
        """Sample until the process exits; kill it after `timeout` seconds (TimeoutError)."""
        deadline = time.monotonic() + timeout
        while (usage := self.reap(block=False)) is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self.reap(block=True)
                raise TimeoutError(f"{self.command[0]} ran longer than {timeout:.0f} s; killed")
            time.sleep(POLL_SECONDS)
        return usage

    def stop(self, timeout: float = 30.0) -> Usage:
        """SIGTERM (a graceful stop), then wait for the exit."""
        if self.usage is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        return self.wait(timeout)

    def tail(self, lines: int = 15) -> str:
        """The end of the command's output, for an error message."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def run_measured(
    command: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path, timeout: float
) -> Usage:
    """Run a command to its end; RuntimeError with its output's tail unless it exits 0."""
    watched = Watched(command, env=env, cwd=cwd, log=log)
    usage = watched.wait(timeout)
    if usage.exit_code != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {usage.exit_code}:\n{watched.tail()}\n(log: {log})"
        )
    return usage


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_greeting(port: int, timeout: float = 15.0) -> None:
    """Return once an SMTP server on `port` answers with its 220 greeting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
        ):
            if sock.recv(4).startswith(b"220"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP server answered on port {port}")


@dataclass
class Window:
    """The machine over one measured window: wall time, every CPU's busy time and (when the
    database is PostgreSQL) the server's CPU, so a figure can be read against the noise."""

    postgres: bool
    wall_s: float = 0.0
    busy_cpu_s: float = 0.0
    db_cpu_s: float = 0.0

    def __enter__(self) -> Window:
        self._start = self._now()
        return self

    def __exit__(self, *_exc: object) -> None:
        end = self._now()
        self.wall_s, self.busy_cpu_s, self.db_cpu_s = (
            b - a for a, b in zip(self._start, end, strict=True)
        )

    def _now(self) -> tuple[float, float, float]:
        db = postgres_cpu_seconds() if self.postgres else 0.0
        return time.perf_counter(), machine_busy_seconds(), db

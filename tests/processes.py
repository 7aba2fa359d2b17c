"""Real `broadside` processes for the tests, the column and SEND_TIME a scheduled send
needs, and what the ledger and the SMTP server say about a send."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.db import transaction
from service.mail.listener import listen
from service.models import Delivery, MailStatus, Subscriber
from tests.conftest import ROOT, SEED
from tests.helpers import eventually
from tests.smtp_server import SmtpTestServer
from tests.web.live import base_url_of


def environment(
    database_url: str, var_dir: Path, smtp_url: str, **settings: object
) -> dict[str, str]:
    """The environment of a broadside process: BROADSIDE_* from `settings` (upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADSIDE_")}
    env.update(
        BROADSIDE_DATABASE_URL=database_url,
        BROADSIDE_SMTP_URL=smtp_url,
        BROADSIDE_SECRET_KEY="fault-suite-secret-key-long-enough",
        BROADSIDE_VAR_DIR=str(var_dir),
        BROADSIDE_COLUMNS_DIR=str(ROOT / "seeds"),
        BROADSIDE_BASE_URL="https://news.example.com",
        BROADSIDE_FROM_ADDRESS="worldview@news.example.com",
        BROADSIDE_LOG_LEVEL="WARNING",
        COLUMNS="200",
    )
    env.update({f"BROADSIDE_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def start(
    *args: str,
    env: dict[str, str],
    log: Path | None = None,
    own_group: bool = False,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start `broadside ARGS` (stderr into `log` when given, so a long run cannot block);
    with `own_group`, in a process group of its own, as a service manager starts it; with
    `pass_fds`, handing those descriptors down (a listening socket for `serve --fd`)."""
    errors = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=errors,
        start_new_session=own_group,
        pass_fds=pass_fds,
    )


@contextmanager
def serving(*args: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """`broadside serve --fd N ARGS` on a socket bound here first, so no other process can take
    its port between choosing and binding it; yields its base URL once it answers."""
    with listen("127.0.0.1", 0) as sock:
        url = base_url_of(sock)
        process = start(
            "serve", "--fd", str(sock.fileno()), *args, env=env, log=log, pass_fds=[sock.fileno()]
        )
    try:  # our copy is closed: the server's is the one that accepts
        assert eventually(lambda: _answers(url) or process.poll() is not None, 30.0, every=0.2)
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.terminate()
        process.wait(15)


def run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def add_readers(engine: Engine, count: int) -> list[str]:
    addresses = [f"reader{i:06d}@example.com" for i in range(count)]
    with transaction(engine) as session:
        session.execute(
            insert(Subscriber),
            [{"email": a, "name": "", "status": "active"} for a in addresses],
        )
    return addresses


def todays_column(folder: Path, today: dt.date) -> None:
    """The seed column, dated `today`, in a folder of its own (for the scheduler's send)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"world-view-{today.isoformat()}.txt").write_text(SEED.read_text())


def _send_at(folder: Path, moment: dt.datetime) -> dict[str, object]:
    todays_column(folder, moment.date())
    return {"columns_dir": folder, "send_time": moment.strftime("%H:%M"), "timezone": "UTC"}


def send_time_passed(folder: Path) -> dict[str, object]:
    """Settings whose SEND_TIME was a minute ago, with today's column in `folder`: a process
    that starts now catches up on that send at once."""
    now = dt.datetime.now(dt.UTC)
    if now.hour == 0 and now.minute < 2:
        pytest.skip("a send time one minute ago would be yesterday")
    return _send_at(folder, now - dt.timedelta(minutes=1))


def send_time_ahead(folder: Path, *, start_up: int) -> tuple[dt.datetime, dict[str, object]]:
    """The next whole minute at least `start_up` seconds away, and settings whose SEND_TIME
    it is, with today's column in `folder`."""
    now = dt.datetime.now(dt.UTC)
    fire_at = (now + dt.timedelta(minutes=2 if now.second > 60 - start_up else 1)).replace(
        second=0, microsecond=0
    )
    if fire_at.date() != now.date():
        pytest.skip("the next minute is tomorrow")
    return fire_at, _send_at(folder, fire_at)


def ledger_states(engine: Engine) -> tuple[dict[str, str], dict[str, str]]:
    """Each reader's status and each delivery's status, by address."""
    with Session(engine) as session:
        readers = {s.email: s.status for s in session.exec(select(Subscriber)).scalars()}
        rows = {d.email: d.status for d in session.exec(select(Delivery)).scalars()}
    return readers, rows


def recorded_sent(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(Delivery.email).where(Delivery.status == MailStatus.sent))
        return {row[0] for row in rows}


def unrecorded(engine: Engine, server: SmtpTestServer) -> int:
    """Messages the relay accepted beyond what the ledger records as sent: each kill adds at
    most the connections in flight; a resend of one of them leaves the count unchanged."""
    sent = recorded_sent(engine)
    return sum(count - (address in sent) for address, count in server.per_recipient().items())


@contextmanager
def serve_processes(count: int, env: dict[str, str], logs: Path) -> Iterator[list[str]]:
    """`count` real `broadside serve --no-scheduler` processes; yields their base URLs once
    all answer."""
    with contextlib.ExitStack() as running:
        urls = []
        for i in range(count):
            log = logs / f"serve-{i}.log"
            urls.append(running.enter_context(serving("--no-scheduler", env=env, log=log)))
        yield urls


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False

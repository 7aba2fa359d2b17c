"""A large send builds its messages in the worker's threads, or, with DELIVERY_BUILD_PROCESSES,
in a child process: every reader still gets exactly one mail, signed, with their own links; a
builder that dies mid-send leaves the rest to threads; a worker killed mid-send takes its
builders with it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from sqlalchemy.engine import Engine

from bench.procs import children_of
from service.config import Settings
from service.context import build_context
from service.delivery import building, daily
from service.delivery.worker import SendWorker
from service.mail import dkim as signing
from service.tokens import Purpose
from tests import processes
from tests.conftest import make_settings
from tests.daily import SEED_DAY, add_readers, courier, start_seed_send
from tests.helpers import eventually, links, path_of
from tests.smtp_server import SmtpTestServer

DOMAIN = "example.com"


@pytest.fixture
def every_send_is_large(monkeypatch: pytest.MonkeyPatch) -> None:
    """A send of a few readers builds in a child process, as one of thousands does."""
    monkeypatch.setattr(building, "PROCESS_MIN_ROWS", 1)


@pytest.fixture
def signed(
    database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> tuple[Settings, Callable[..., bytes | None]]:
    """Settings that sign with RSA-2048, and the DNS look-up that publishes the key."""
    key = signing.new_key("rsa")
    signing.write_key(key, tmp_path / "rsa.pem")
    settings = make_settings(
        database_url,
        tmp_path / "var",
        smtp_url=smtp_server.url,
        dkim_domain=DOMAIN,
        dkim_selector="s1",
        dkim_private_key=str(tmp_path / "rsa.pem"),
        delivery_build_processes=1,
    )
    record = signing.public_record(key).encode()

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == f"s1._domainkey.{DOMAIN}.".encode() else None

    return settings, lookup


def test_a_large_send_is_built_in_a_child_and_each_reader_gets_one_signed_mail_of_their_own(
    engine: Engine,
    smtp_server: SmtpTestServer,
    signed: tuple[Settings, Callable[..., bytes | None]],
    every_send_is_large: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, dns = signed
    readers = add_readers(engine, active=40)["active"]
    send = start_seed_send(engine, settings)
    with caplog.at_level(logging.INFO, logger=building.__name__):
        counts = asyncio.run(SendWorker(courier(engine, settings)).run(send.id or 0))
    assert counts.sent == 40
    assert "built in 1 child process" in caplog.text
    assert sorted(smtp_server.per_recipient()) == sorted(readers)
    assert set(smtp_server.per_recipient().values()) == {1}
    tokens = build_context(settings).tokens
    for mail in smtp_server.received:
        assert dkim.verify(mail.data, dnsfunc=dns)
        [unsubscribe] = links(mail, "/unsubscribe/")
        reader = tokens.read(Purpose.unsubscribe, path_of(unsubscribe).rsplit("/", 1)[1])
        assert readers[int(reader) - 1] == mail.rcpt_tos[0]  # ids follow insertion order


def test_by_default_a_large_send_is_built_and_signed_in_the_workers_threads(
    engine: Engine,
    smtp_server: SmtpTestServer,
    signed: tuple[Settings, Callable[..., bytes | None]],
    every_send_is_large: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, dns = signed
    settings = settings.model_copy(update={"delivery_build_processes": 0})
    assert Settings.model_fields["delivery_build_processes"].default == 0

    async def no_process(*_args: object) -> None:
        raise AssertionError("a builder process was started")

    monkeypatch.setattr(building._Process, "start", no_process)
    readers = add_readers(engine, active=40)["active"]
    send = start_seed_send(engine, settings)
    assert asyncio.run(SendWorker(courier(engine, settings)).run(send.id or 0)).sent == 40
    assert sorted(smtp_server.per_recipient()) == sorted(readers)
    assert set(smtp_server.per_recipient().values()) == {1}
    assert all(dkim.verify(mail.data, dnsfunc=dns) for mail in smtp_server.received)


def test_a_builder_process_that_dies_mid_send_leaves_the_rest_to_threads(
    engine: Engine,
    settings: Settings,
    smtp_server: SmtpTestServer,
    every_send_is_large: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"delivery_build_processes": 1})
    readers = add_readers(engine, active=400)["active"]
    send = start_seed_send(engine, settings)
    smtp_server.handler.data_delay = 0.05  # slow enough to kill the builder mid-send

    async def kill_the_builder_then_finish() -> int:
        run = asyncio.create_task(SendWorker(courier(engine, settings)).run(send.id or 0))
        while len(smtp_server.received) < 10:
            await asyncio.sleep(0.02)
        [builder] = _builders_of(os.getpid())
        os.kill(builder, signal.SIGKILL)
        return (await run).sent

    with caplog.at_level(logging.ERROR, logger=building.__name__):
        sent = asyncio.run(kill_the_builder_then_finish())
    assert sent == 400
    assert "a builder process died" in caplog.text
    assert sorted(smtp_server.per_recipient()) == sorted(readers)
    assert set(smtp_server.per_recipient().values()) == {1}


def test_a_kit_that_will_not_pickle_leaves_no_builder_behind_and_the_send_to_threads(
    engine: Engine,
    settings: Settings,
    smtp_server: SmtpTestServer,
    every_send_is_large: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"delivery_build_processes": 1})
    frame = building.builder.frame

    def refuse_the_kit(value: object) -> bytes:
        if isinstance(value, tuple) and isinstance(value[0], building.Kit):
            raise TypeError("cannot pickle the kit")
        return frame(value)

    monkeypatch.setattr(building.builder, "frame", refuse_the_kit)
    readers = add_readers(engine, active=20)["active"]
    send = start_seed_send(engine, settings)

    async def send_then_look_for_builders() -> tuple[int, list[int]]:
        sent = (await SendWorker(courier(engine, settings)).run(send.id or 0)).sent
        return sent, _builders_of(os.getpid())

    with caplog.at_level(logging.ERROR, logger=building.__name__):
        sent, left = asyncio.run(send_then_look_for_builders())
    assert (sent, left) == (20, [])
    assert "cannot pickle the kit" in caplog.text
    assert sorted(smtp_server.per_recipient()) == sorted(readers)


def test_a_builder_process_loads_neither_the_settings_nor_the_database_nor_the_web(
    engine: Engine,
    signed: tuple[Settings, Callable[..., bytes | None]],
    tmp_path: Path,
) -> None:
    # What a builder imports is what it costs each large send in memory (docs/BENCHMARKS.md):
    # the module and what it unpickles, a signed column's kit and mail, load nothing heavier.
    settings, _dns = signed
    send = start_seed_send(engine, settings)
    deliveries = courier(engine, settings)
    column = daily.column_of(engine, SEED_DAY)
    assert column is not None
    job = building.job_for(
        deliveries, column, send_id=send.id or 0, message_domain="d", deadline=dt.datetime.now()
    )
    sent = tmp_path / "frame"
    sent.write_bytes(building.builder.frame((building.kit_for(job, deliveries.ctx), job.prepared)))
    heavy = ["sqlalchemy", "sqlmodel", "pydantic", "pydantic_settings", "psycopg", "jinja2"]
    heavy += ["css_inline", "fastapi", "starlette", "typer", "rich", "service.config"]
    heavy += ["aiosmtplib", "asyncio", "ssl", "dns"]  # the client, and dkimpy's DNS lookups
    probe = (
        f"import sys, {building.builder.__name__} as b;"
        "b._sign_without_lookups();"  # as main() does first
        f"kit, mail = b._read(open({str(sent)!r}, 'rb'));"
        "assert b.build(kit, mail, [(1, 'ada@example.com', 'Ada')])[0][0] is not None;"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_a_send_to_a_relay_loads_neither_the_capture_server_nor_the_long_running_runtime() -> None:
    # What `broadside send` imports is what a large send costs in memory (docs/BENCHMARKS.md):
    # the modules its command loads, and the capture server's only when it starts one.
    heavy = ["aiosmtpd", "apscheduler", "prometheus_client", "service.runtime", "service.bounces"]
    heavy += ["service.web", "fastapi", "uvicorn"]
    probe = (
        "import sys, service.cli, service.console, service.context, service.mail.capture;"
        "import service.delivery.daily, service.delivery.worker, service.delivery.courier;"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_send_takes_its_builder_process_with_it(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    send, builder = _a_large_send_under_way(engine, database_url, tmp_path, smtp_server)
    send.kill()
    send.wait()
    deadline = time.monotonic() + 10
    while _alive(builder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(builder), "the builder process outlived its killed worker"


@pytest.mark.slow
def test_a_sigterm_to_the_whole_group_stops_the_send_gracefully_and_its_builder_with_it(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    # systemd and docker stop a service by signalling every process of it, the builder too.
    send, builder = _a_large_send_under_way(
        engine, database_url, tmp_path, smtp_server, own_group=True
    )
    try:
        os.killpg(send.pid, signal.SIGTERM)
        assert send.wait(timeout=15) == 1  # stopped before the end: "run again to finish"
    finally:
        if send.poll() is None:
            send.kill()
    assert "builder process died" not in (tmp_path / "log").read_text()
    assert not _alive(builder), "the builder outlived its worker's graceful stop"
    assert processes.unrecorded(engine, smtp_server) == 0  # nothing accepted but unrecorded


def _a_large_send_under_way(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    *,
    own_group: bool = False,
) -> tuple[subprocess.Popen[bytes], int]:
    """A `broadside send` large enough for a builder process, 20 messages in (stderr in
    tmp_path/log), and its builder's pid."""
    processes.add_readers(engine, building.PROCESS_MIN_ROWS + 100)
    smtp_server.handler.data_delay = 0.05
    env = processes.environment(
        database_url, tmp_path / "var", smtp_server.url, delivery_build_processes=1
    )
    log = tmp_path / "log"
    send = processes.start(
        "send", "--date", SEED_DAY.isoformat(), env=env, log=log, own_group=own_group
    )
    try:
        eventually(lambda: len(smtp_server.received) >= 20, timeout=60)
        [builder] = _builders_of(send.pid)
    except BaseException:
        send.kill()
        send.wait()
        raise
    return send, builder


def _builders_of(pid: int) -> list[int]:
    """The builder processes of `pid`."""
    found = []
    for child in children_of(pid):
        try:
            if building.builder.__name__.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # an orphan's zombie is reaped by init; it runs no more

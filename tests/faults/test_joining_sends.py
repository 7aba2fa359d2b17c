"""A real `broadside worker` process joins, within seconds, a send another process started:
the watch runs where the worker runs, not only in a test's event loop."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.engine import Engine

from tests import processes
from tests.conftest import make_settings
from tests.daily import start_seed_send
from tests.delivery.test_joining_sends import PROMPTLY
from tests.helpers import eventually, sends_done
from tests.smtp_server import SmtpTestServer


def test_a_worker_process_delivers_a_send_started_elsewhere_within_seconds(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    readers = processes.add_readers(engine, 50)
    # Its heal runs at start-up, then an hour later: only the watch can find the send.
    env = processes.environment(
        database_url, tmp_path / "var", smtp_server.url, resume_interval="PT1H", log_level="INFO"
    )
    log = tmp_path / "worker.log"
    worker = processes.start("worker", env=env, log=log)
    try:
        assert eventually(lambda: "worker running" in log.read_text(), timeout=30, every=0.2)
        time.sleep(1.0)  # its start-up heal has looked, and found nothing to resume
        settings = make_settings(database_url, tmp_path / "test", smtp_url=smtp_server.url)
        start_seed_send(engine, settings)  # as `serve` does on an operator's "send now"
        started = time.monotonic()
        assert eventually(lambda: len(smtp_server.received) >= len(readers), 30, every=0.1)
        took = time.monotonic() - started
        assert eventually(lambda: sends_done(engine), timeout=30, every=0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert took < PROMPTLY, f"the worker joined after {took:.1f} s"
    assert "is going out: joining it" in log.read_text(), "the watch found it, not the heal"
    got = smtp_server.per_recipient()
    assert sorted(got) == readers and set(got.values()) == {1}

"""Prometheus exposition: the database's figures read at each scrape, this process's HTTP
timings (summed over processes through PROMETHEUS_MULTIPROC_DIR), the METRICS_PORT server."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import stats
from .clock import utcnow
from .config import Settings
from .db import transaction
from .delivery.sends import SendSummary
from .models import MailStatus

log = logging.getLogger(__name__)
# prometheus-client's own variable: read by it at import to decide whether measurements go
# to per-process files in that folder (any process then reports them all) or stay in memory.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LEDGER_STATES = ("pending", "deferred", "sending", "sent", "failed", "skipped", "cancelled")
# Why a mail was given up on; transactional mail has no deadline, so only a refused mailbox.
FAILURE_REASONS = {
    "column": ("mailbox", "retry-deadline", "unbuildable"),
    "transactional": ("mailbox",),
}
SERVER_STOP_TIMEOUT = 5.0
DATABASE_UP = "1 when the database answered this scrape's queries, 0 when it did not."

HTTP_LATENCY = Histogram(
    "broadside_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status class.",
    ["method", "route", "status"],
    registry=None,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request (`route` is the template, never the path with a token)."""
    HTTP_LATENCY.labels(method, route, f"{status // 100}xx").observe(seconds)


def registry(engine: Engine) -> CollectorRegistry:
    """What a scrape of this process shows: the database's figures, and the HTTP timings of
    this process or, in multiprocess mode, of every process sharing the folder."""
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(DatabaseFigures(engine))
    folder = os.environ.get(MULTIPROCESS_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        MultiProcessCollector(scraped, path=folder)
    else:
        scraped.register(HTTP_LATENCY)
    return scraped


class DatabaseFigures(Collector):
    """The service's counts (service/stats.py), read at each scrape: they are facts in the
    database, the same whichever process is asked."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not query the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """broadside_database_up, and every figure when the database answers."""
        try:
            with transaction(self.engine) as session:
                found = stats.figures(session)
        except SQLAlchemyError as exc:  # the process's own timings are still worth a scrape
            log.warning("metrics: the database did not answer (%s)", exc.__class__.__name__)
            yield GaugeMetricFamily("broadside_database_up", DATABASE_UP, value=0)
            return
        yield GaugeMetricFamily("broadside_database_up", DATABASE_UP, value=1)
        yield from families(found, utcnow())


def families(found: stats.Figures, now: dt.datetime) -> Iterator[Metric]:
    """The figures as Prometheus metric families; `now` (naive UTC) ends a running send."""
    yield from _messages(found)
    ledger = GaugeMetricFamily(
        "broadside_ledger_deliveries", "Column deliveries in the ledger by state.", labels=["state"]
    )
    for state in LEDGER_STATES:
        ledger.add_metric([state], found.deliveries.states.get(state, 0))
    yield ledger
    waiting = (MailStatus.pending, "deferred", MailStatus.sending)
    yield GaugeMetricFamily(
        "broadside_outbox_depth",
        "Transactional mails waiting to be sent, waiting for a retry, or being sent.",
        value=sum(found.outbox.states.get(state, 0) for state in waiting),
    )
    yield _by_label(
        GaugeMetricFamily("broadside_readers", "Readers by status.", labels=["status"]),
        found.readers,
    )
    bounces = CounterMetricFamily(
        "broadside_bounces",
        "Reports that came back (bounces, complaints, mailto: unsubscribes, auto-replies), by "
        "kind and by where they came from.",
        labels=["kind", "source"],
    )
    for (kind, source), count in sorted(found.bounces.items()):
        bounces.add_metric([kind, source], count)
    yield bounces
    yield _by_label(
        CounterMetricFamily(
            "broadside_consents",
            "Consent records by action: subscribe, confirm, unsubscribe, one-click-unsubscribe, "
            "mail-unsubscribe, resubscribe, bounce, complaint.",
            labels=["action"],
        ),
        found.consents,
    )
    if found.latest_send is not None:
        yield from _latest_send(found.latest_send, now)


def _messages(found: stats.Figures) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        "broadside_messages_sent", "Messages the relay accepted.", labels=["mail"]
    )
    failed = CounterMetricFamily(
        "broadside_messages_failed",
        "Messages given up on, by reason: mailbox (the relay refused the recipient for good), "
        "retry-deadline (still failing at RETRY_DEADLINE), unbuildable.",
        labels=["mail", "reason"],
    )
    skipped = CounterMetricFamily(
        "broadside_messages_skipped",
        "Messages not sent because the reader left or the address is suppressed.",
        labels=["mail"],
    )
    deferred = GaugeMetricFamily(
        "broadside_messages_deferred",
        "Messages waiting for a retry after a transient failure.",
        labels=["mail"],
    )
    for mail, work in (("column", found.deliveries), ("transactional", found.outbox)):
        sent.add_metric([mail], work.states.get(MailStatus.sent, 0))
        skipped.add_metric([mail], work.states.get(MailStatus.skipped, 0))
        deferred.add_metric([mail], work.states.get("deferred", 0))
        for reason in FAILURE_REASONS[mail]:
            failed.add_metric([mail, reason], work.failed.get(reason, 0))
    yield from (sent, failed, skipped, deferred)


def _latest_send(send: SendSummary, now: dt.datetime) -> Iterator[Metric]:
    ended = send.finished_at or send.cancelled_at or now
    yield InfoMetricFamily(
        "broadside_latest_send",
        "The latest send: its id, column date and status.",
        value={"id": str(send.id), "date": send.date.isoformat(), "status": str(send.status)},
    )
    yield GaugeMetricFamily(
        "broadside_latest_send_start_time_seconds",
        "When the latest send started (Unix time).",
        value=send.started_at.replace(tzinfo=dt.UTC).timestamp(),
    )
    yield GaugeMetricFamily(
        "broadside_latest_send_duration_seconds",
        "How long the latest send took, or has taken so far while it runs.",
        value=max((ended - send.started_at).total_seconds(), 0.0),
    )
    progress = {
        "readers": send.readers,
        "sent": send.counts.sent,
        "failed": send.counts.failed,
        "skipped": send.counts.skipped,
        "remaining": send.counts.pending,
        "deferred": send.deferred,
    }
    yield _by_label(
        GaugeMetricFamily(
            "broadside_latest_send_deliveries",
            "The latest send's progress: its readers, and its deliveries sent, failed, skipped, "
            "remaining (of which deferred).",
            labels=["state"],
        ),
        progress,
    )


def _by_label(
    family: GaugeMetricFamily | CounterMetricFamily, counts: dict[str, int]
) -> GaugeMetricFamily | CounterMetricFamily:
    for label, count in sorted(counts.items()):
        family.add_metric([str(label)], count)
    return family


@contextlib.contextmanager
def served_on_port(engine: Engine, settings: Settings) -> Iterator[None]:
    """With METRICS_PORT, serve this process's metrics on 127.0.0.1:PORT (any path, no
    credential: only this machine can reach it) while the caller runs. OSError naming the
    address when the port is taken."""
    if settings.metrics_port is None:
        yield
        return
    port = settings.metrics_port
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry(engine))
    except OSError as exc:
        raise OSError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from exc
    log.info("metrics on http://127.0.0.1:%s/metrics", port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(SERVER_STOP_TIMEOUT)

"""Small helpers the tests share: waiting for something to happen, reading the mails that
arrived, and reading the rows a test asserts on."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.db import transaction
from service.models import MailStatus, OutboxMail, Send, SendStatus, Subscriber, SubscriberStatus

if TYPE_CHECKING:
    from tests.smtp_server import Received

T = TypeVar("T")
URL_RE = re.compile(r"https://news\.example\.com/[^\s\"'<>]+")


def eventually(predicate: Callable[[], T], timeout: float, every: float = 0.05) -> T:
    """Ask `predicate` every `every` seconds until its answer is true or `timeout` seconds
    have passed; returns its last answer (false when time ran out)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = predicate()
        if answer or time.monotonic() >= deadline:
            return answer
        time.sleep(every)


def body(mail: Received, kind: Literal["plain", "html"]) -> str:
    """The decoded text of the mail's text/plain or text/html part."""
    part = mail.message.get_body(preferencelist=(kind,))
    assert part is not None, f"the mail has no text/{kind} part"
    return str(part.get_content())


def links(mail: Received, path: str) -> list[str]:
    """Every link in the mail's plain-text part whose path starts with `path`."""
    prefix = f"https://news.example.com{path}"
    return [u for u in URL_RE.findall(body(mail, "plain")) if u.startswith(prefix)]


def path_of(url: str) -> str:
    return url.removeprefix("https://news.example.com")


def add_reader(
    engine: Engine,
    email: str,
    *,
    status: SubscriberStatus = SubscriberStatus.active,
    name: str = "Ada",
) -> int:
    """One reader in the table, as if they had subscribed long ago; their id."""
    with transaction(engine) as session:
        subscriber = Subscriber(email=email, name=name, status=status)
        session.add(subscriber)
        session.flush()
        assert subscriber.id is not None
        return subscriber.id


def reader(engine: Engine, email: str) -> Subscriber:
    """The subscriber row of `email`, which must exist."""
    with Session(engine) as session:
        found = session.exec(select(Subscriber).where(Subscriber.email == email)).first()
    assert found is not None, f"no subscriber {email}"
    return found


def outbox_rows(engine: Engine) -> list[OutboxMail]:
    with Session(engine) as session:
        return list(session.exec(select(OutboxMail)))


def outbox_idle(engine: Engine) -> bool:
    """Every queued transactional mail has been handed to the relay or refused for good, so
    nothing more goes out until something new is queued. (A row is marked sent only after
    the relay answered, so the test server has recorded each sent mail by then.)"""
    waiting = (MailStatus.pending, MailStatus.sending)
    return all(row.status not in waiting for row in outbox_rows(engine))


def sends_done(engine: Engine) -> bool:
    """There is a send, and every delivery of every send has ended (sent, failed, skipped)."""
    with Session(engine) as session:
        statuses = [send.status for send in session.exec(select(Send))]
    return bool(statuses) and all(status == SendStatus.done for status in statuses)


def app_routes(app: object) -> list[object]:
    """Every route the app serves, through included routers (FastAPI wraps them)."""

    def walk(routes: list[object]) -> list[object]:
        found: list[object] = []
        for route in routes:
            inner = getattr(route, "original_router", None)
            found += walk(inner.routes) if inner is not None else [route]
        return found

    return walk(list(getattr(app, "routes", [])))


@contextmanager
def statements(engine: Engine) -> Iterator[list[tuple[str, object]]]:
    """The SQL statements `engine` runs meanwhile, with their parameters (transaction control
    left out)."""
    seen: list[tuple[str, object]] = []

    def record(
        _conn: object, _cursor: object, statement: str, parameters: object, *_args: object
    ) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def free_port() -> int:
    """A port nobody listens on now: for a server in another process, which binds it itself,
    or for an address where nothing answers. A server in this process binds port 0 instead
    (`BoundController`, `tests.web.live.listening`), which leaves no moment in between."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

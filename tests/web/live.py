"""The app behind a real uvicorn server, configured as `broadside serve` configures it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.mail.listener import listen
from service.web import server
from tests.helpers import eventually

STARTUP_TIMEOUT = 10.0  # seconds for uvicorn to run the lifespan and listen


def listening() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1, for `serving`. A test whose settings must
    name the base URL before the app is made reads the port from it: looked up first and
    bound later, the port was sometimes taken by another test's server in between."""
    return listen("127.0.0.1", 0)


def base_url_of(listener: socket.socket) -> str:
    """The base URL of a server on `listener`."""
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextmanager
def serving(
    app: FastAPI, settings: Settings, listener: socket.socket | None = None
) -> Iterator[str]:
    """Run `app` on 127.0.0.1 in a thread until the block ends, on `listener` or on a socket
    of its own (`listening`); yields its base URL."""
    listener = listener or listening()
    port = listener.getsockname()[1]
    running = uvicorn.Server(server.config(settings, app, "127.0.0.1", port))
    thread = threading.Thread(
        target=running.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True
    )
    thread.start()
    # uvicorn returns from run() when the lifespan or the bind fails.
    ended = eventually(lambda: running.started or not thread.is_alive(), STARTUP_TIMEOUT, 0.02)
    assert ended, "uvicorn did not start listening in time"
    assert running.started, "uvicorn stopped during start-up; see the log above"
    try:
        yield base_url_of(listener)
    finally:
        running.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        listener.close()

"""The app behind a real uvicorn server, configured as `broadside serve` configures it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.web import server
from tests.helpers import eventually

STARTUP_TIMEOUT = 10.0  # seconds for uvicorn to run the lifespan and listen


@contextmanager
def serving(app: FastAPI, settings: Settings, port: int | None = None) -> Iterator[str]:
    """Run `app` on 127.0.0.1 in a thread until the block ends; yields its base URL. The
    socket is bound here, before uvicorn starts, so that no other test's server can take
    the port in between (a free port looked up first and bound later sometimes was)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port or 0))
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
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        listener.close()

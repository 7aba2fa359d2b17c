"""The uvicorn server `broadside serve` runs: which proxies to believe, and logs without tokens."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from ..config import Settings
from .logs import uvicorn_log_config


def config(settings: Settings, app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """The server configuration for `app` on host:port.

    X-Forwarded-For and X-Forwarded-Proto count only from TRUSTED_PROXIES: behind
    docker-compose or a reverse proxy every reader would otherwise share the proxy's address
    (one rate-limit bucket, one IP in every consent record); from anyone else they are
    ignored, so a client cannot choose its own address."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=True,
        forwarded_allow_ips=list(settings.trusted_proxies),
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_format),
    )


def inherited_socket(fd: int) -> socket.socket:
    """The listening TCP socket a service manager (systemd's socket activation: fd 3) or a
    supervisor handed down as file descriptor `fd`. ValueError saying what `fd` is instead."""
    if not 0 <= fd < 2**31:  # a C int: anything larger would wrap around to another one
        raise ValueError(f"{fd} is not a file descriptor")
    try:
        sock = socket.socket(fileno=fd)  # the family and type are read from the descriptor
    except OSError as exc:  # EBADF: nothing open there; ENOTSOCK: a file or a pipe
        raise ValueError(f"file descriptor {fd} is not an open socket ({exc.strerror})") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not listening:
        sock.detach()  # not ours to close
        raise ValueError(f"file descriptor {fd} is not a listening TCP socket")
    return sock


def url(host: str, port: int) -> str:
    """http://HOST:PORT, an IPv6 address in brackets: for the start-up line."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

"""The uvicorn server `broadside serve` runs: which proxies to believe, and logs without tokens."""

from __future__ import annotations

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

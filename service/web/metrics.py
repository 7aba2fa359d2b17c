"""GET /metrics behind the admin token, unless METRICS_PORT serves it apart (service/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admin import require_admin

router = APIRouter()


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_admin)])
def metrics(request: Request) -> Response:
    """The Prometheus text format: the database's figures and the HTTP timings."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)

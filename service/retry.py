"""When, and by whom, failed or abandoned work is tried again: exponential backoff with
jitter, and the names that leases (ledger and outbox claims) are held under."""

from __future__ import annotations

import os
import random
import secrets
import socket
from datetime import datetime, timedelta


def worker_name() -> str:
    """A name for one lease holder: host, process and a random part (unique per holder)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


def next_attempt(
    now: datetime,
    attempts: int,
    *,
    initial: float,
    maximum: float,
    rng: random.Random | None = None,
) -> datetime:
    """Delay doubles from `initial` with each attempt, capped at `maximum`; "equal jitter"
    (half fixed, half random) spreads retries so a recovering server is not hit at once."""
    ceiling = min(maximum, initial * 2 ** max(0, attempts - 1))
    jitter = (rng or random).uniform(0, ceiling / 2)
    return now + timedelta(seconds=ceiling / 2 + jitter)

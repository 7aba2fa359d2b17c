"""When to try a transient failure again: exponential backoff with jitter."""

from __future__ import annotations

import random
from datetime import datetime, timedelta


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

"""DELIVERY_RATE and the relays' hourly caps across every worker process: tokens taken from a
database bucket a batch at a time (one statement) and handed out here, one per message."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ..clock import utcnow
from ..config import RATE_BATCH_SECONDS, RATE_BUCKET_CLOCK_SKEW
from ..db import in_thread
from ..limits import HOUR, LONGEST_WINDOW, forget_idle, take

MIN_WAIT = 0.01  # seconds: never spin on the database while a bucket refills


class SharedRate:
    """`per_second` messages for everyone who shares `key`, in this process and in others.
    The bucket holds `capacity` (default: one batch), so a burst beyond the rate is at most
    one batch per process; tokens left unused when the process stops are lost, not lent."""

    def __init__(
        self,
        engine: Engine,
        key: str,
        *,
        per_second: float,
        capacity: float | None = None,
        batch: int | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.key = key
        self.per_second = per_second
        self.batch = batch or _batch(per_second)
        self.capacity = capacity or self.batch
        self.clock = clock
        self.granted = 0  # tokens this process took from the bucket: what tests count
        self._local = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for one token (from this process's batch, or a new batch from the bucket)."""
        while (wait := await self.try_acquire()) > 0:
            await asyncio.sleep(wait)

    async def try_acquire(self) -> float:
        """Take one token: 0.0 when taken, else the seconds until the bucket has one again."""
        async with self._lock:  # one refill at a time; the others use what it brings
            if self._local == 0:
                got = await in_thread(
                    self.engine,
                    take,
                    self.key,
                    capacity=self.capacity,
                    per_second=self.per_second,
                    want=self.batch,
                    least=1,
                    now=self.clock(),
                )
                if not got.granted:
                    return max(MIN_WAIT, (1 - got.tokens) / self.per_second)
                self._local = got.granted
                self.granted += got.granted
            self._local -= 1
            return 0.0


def delivery_rate(engine: Engine, send_id: int, per_second: float) -> SharedRate | None:
    """DELIVERY_RATE for one send, shared by every worker on it (0 = unlimited)."""
    if per_second <= 0:
        return None
    return SharedRate(engine, f"delivery:send:{send_id}", per_second=per_second)


def _batch(per_second: float) -> int:
    """Tokens taken at a time (and a bucket's default capacity): RATE_BATCH_SECONDS' worth."""
    return max(1, math.ceil(per_second * RATE_BATCH_SECONDS))


def idle_bucket_age(delivery_rate: float) -> timedelta:
    """How long a bucket must sit idle to be full again, whatever it limits: a day (the
    readers' longest count), an hour (a relay's per_hour cap), one batch of DELIVERY_RATE
    (longer than a day only at less than a message a day); and RATE_BUCKET_CLOCK_SKEW more."""
    longest = max(LONGEST_WINDOW, HOUR)
    if delivery_rate > 0:
        longest = max(longest, timedelta(seconds=_batch(delivery_rate) / delivery_rate))
    return longest + RATE_BUCKET_CLOCK_SKEW


def forget_idle_buckets(session: Session, *, delivery_rate: float, now: datetime) -> int:
    """Delete every rate bucket idle long enough to be full again: a finished send's, a relay
    no longer used, a reader who came once. How many went."""
    return forget_idle(session, idle_for=idle_bucket_age(delivery_rate), now=now)

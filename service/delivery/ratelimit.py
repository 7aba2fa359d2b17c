"""DELIVERY_RATE and the relays' hourly caps across every worker process: tokens taken from a
database bucket a batch at a time (one statement) and handed out here, one per message."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Engine

from ..clock import utcnow
from ..config import RATE_BATCH_SECONDS
from ..db import in_thread
from ..limits import take

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
        self.batch = batch or max(1, math.ceil(per_second * RATE_BATCH_SECONDS))
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

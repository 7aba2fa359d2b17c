"""Token buckets in the database: refilled at their rate, never above their capacity, and
never overspent by parallel takers, on both databases."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from service.db import transaction
from service.delivery.ratelimit import SharedRate
from service.errors import RateLimited
from service.limits import check_and_count, take
from tests.conftest import Clock


def test_a_bucket_refills_at_its_rate_and_never_above_its_capacity(
    engine: Engine, clock: Clock
) -> None:
    def hit() -> int | None:
        try:
            with transaction(engine) as session:
                check_and_count(
                    session, "k", limit=3, window=timedelta(minutes=3), now=clock.utcnow()
                )
        except RateLimited as limited:
            return limited.retry_after
        return None

    assert [hit(), hit(), hit()] == [None, None, None]
    assert hit() == 60  # one token a minute
    clock.advance(30)
    assert hit() == 30
    clock.advance(30)
    assert [hit(), hit()] == [None, 60]
    clock.advance(3600)  # an idle hour fills it to 3, no more
    assert [hit(), hit(), hit(), hit()] == [None, None, None, 60]


def test_a_clock_behind_the_bucket_refills_nothing(engine: Engine, clock: Clock) -> None:
    def grab(seconds: float) -> int:
        at = clock.utcnow() + timedelta(seconds=seconds)
        with transaction(engine) as session:
            return take(session, "k", capacity=2, per_second=1, want=2, least=1, now=at).granted

    assert grab(0) == 2
    assert grab(-50) == 0  # another host's clock, behind: no refill, no time travel
    assert grab(1) == 1


def test_parallel_takers_never_overspend_a_bucket(engine: Engine, clock: Clock) -> None:
    threads = 16
    start = threading.Barrier(threads)

    def one(_: int) -> int:
        start.wait()
        with transaction(engine) as session:
            return take(session, "shared", capacity=5, per_second=0.001, now=clock.utcnow()).granted

    with ThreadPoolExecutor(threads) as pool:
        granted = list(pool.map(one, range(threads)))
    assert sum(granted) == 5


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_sharing_a_rate_get_no_more_than_it_refills(
    engine: Engine, clock: Clock, workers: int
) -> None:
    rates = [
        SharedRate(engine, "delivery:send:1", per_second=20, clock=clock.utcnow)
        for _ in range(workers)
    ]
    assert rates[0].batch == rates[0].capacity == 10  # half a second's worth at a time

    async def drain() -> int:
        """Every worker takes what it can until the bucket says wait."""
        taken = 0
        for rate in rates:
            while await rate.try_acquire() == 0:
                taken += 1
        return taken

    assert asyncio.run(drain()) == 10
    clock.advance(0.25)
    assert asyncio.run(drain()) == 5  # 20/s for a quarter second
    clock.advance(60)
    assert asyncio.run(drain()) == 10  # a long pause fills one batch, not a minute's worth
    assert sum(rate.granted for rate in rates) == 25

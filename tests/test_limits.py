"""Token buckets in the database: refilled at their rate, never above their capacity, never
overspent by parallel takers, and forgotten once idle long enough to be full again (even with
a take racing the delete), on both databases."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from service.db import transaction
from service.delivery.ratelimit import SharedRate, forget_idle_buckets
from service.errors import RateLimited
from service.limits import (
    DAY,
    HOUR,
    Ask,
    check_and_count,
    check_and_count_all,
    forget_idle,
    take,
    take_all,
)
from service.models import RateBucket
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


@pytest.mark.parametrize("start_us, end_us", [(500_000, 999_700), (999_700, 999_900)])
def test_a_take_in_the_last_half_millisecond_of_a_second_refills_what_elapsed(
    engine: Engine, start_us: int, end_us: int
) -> None:
    # SQLite's strftime rounds to the millisecond: read whole, "…:01.9997" was second 02, and a
    # bucket refilled a second too much (an extra batch of DELIVERY_RATE across workers).
    second = datetime(2026, 11, 27, 15, 40, 1)

    def grab(micro: int) -> int:
        at = second.replace(microsecond=micro)
        with transaction(engine) as session:
            return take(session, "k", capacity=2, per_second=1, want=2, least=1, now=at).granted

    assert grab(start_us) == 2  # a new bucket starts full
    assert grab(end_us) == 0  # under half a second later: nothing refilled


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


def spend(engine: Engine, key: str, at: datetime, *, capacity: int = 3) -> int:
    """Take all a bucket of `capacity` a day holds at `at`; what it granted."""
    per_second = capacity / DAY.total_seconds()
    with transaction(engine) as session:
        got = take(session, key, capacity=capacity, per_second=per_second, want=capacity, now=at)
    return got.granted


def forget(engine: Engine, at: datetime, idle_for: timedelta = DAY) -> int:
    with transaction(engine) as session:
        return forget_idle(session, idle_for=idle_for, now=at)


def bucket_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(RateBucket.key)))


def test_a_bucket_idle_for_its_whole_window_is_forgotten_and_no_limit_moves(
    engine: Engine, clock: Clock
) -> None:
    start = clock.utcnow()
    assert spend(engine, "idle", start) == spend(engine, "twin", start) == 3
    assert forget(engine, start + DAY - timedelta(seconds=1)) == 0  # still refilling
    assert bucket_keys(engine) == {"idle", "twin"}

    later = start + DAY + timedelta(seconds=1)
    with transaction(engine) as session:  # the twin stays, as if the sweep had not run
        take(session, "twin", capacity=3, per_second=3 / DAY.total_seconds(), want=0, now=later)
    assert forget(engine, later) == 1
    assert bucket_keys(engine) == {"twin"}
    # The forgotten bucket comes back full: what the bucket kept all along holds too.
    assert spend(engine, "idle", later) == spend(engine, "twin", later) == 3


def test_a_take_racing_the_sweep_keeps_its_spent_bucket(engine: Engine, clock: Clock) -> None:
    start = clock.utcnow()
    spend(engine, "raced", start)
    now = start + DAY + HOUR  # idle past its window: the sweep would delete it
    taken = threading.Event()
    committing: list[float] = []

    def take_and_hold() -> None:
        with transaction(engine) as session:
            per_second = 3 / DAY.total_seconds()
            assert take(session, "raced", capacity=3, per_second=per_second, want=3, now=now)
            taken.set()
            time.sleep(0.5)  # the sweep reaches the row while this take holds it
            # Taken before the COMMIT: the sweep wakes when the server has committed, which
            # may be before this thread hears so and could stamp a moment after it.
            committing.append(time.monotonic())

    taker = threading.Thread(target=take_and_hold)
    taker.start()
    assert taken.wait(10)
    forgotten = forget(engine, now)  # as it read the table, the bucket was a day idle
    swept_at = time.monotonic()
    taker.join()
    assert committing and swept_at >= committing[0], "the sweep waited for the take"
    assert forgotten == 0 and bucket_keys(engine) == {"raced"}
    assert spend(engine, "raced", now) == 0, "the take's spending holds: nothing left today"


def test_a_sweep_racing_a_take_gives_it_a_full_bucket_never_an_error(
    engine: Engine, clock: Clock
) -> None:
    start = clock.utcnow()
    spend(engine, "raced", start)
    now = start + DAY + HOUR
    deleted = threading.Event()
    granted: list[int] = []

    def sweep_and_hold() -> None:
        with transaction(engine) as session:
            assert forget_idle(session, idle_for=DAY, now=now) == 1
            deleted.set()
            time.sleep(0.5)  # the take reaches the row while this sweep holds it

    sweeper = threading.Thread(target=sweep_and_hold)
    sweeper.start()
    assert deleted.wait(10)
    granted.append(spend(engine, "raced", now))  # waits for the delete, then starts afresh
    sweeper.join()
    # The deleted bucket was full (a day idle): a new full one is the same limit.
    assert granted == [3]
    assert spend(engine, "raced", now) == 0


def test_a_slow_delivery_rate_keeps_its_bucket_until_it_has_refilled(
    engine: Engine, clock: Clock
) -> None:
    per_second = 1 / (2 * DAY.total_seconds())  # one message every other day

    async def one() -> float:
        rate = SharedRate(engine, "delivery:send:1", per_second=per_second, clock=clock.utcnow)
        return await rate.try_acquire()

    assert asyncio.run(one()) == 0
    clock.advance(1.5 * DAY.total_seconds())
    with transaction(engine) as session:
        kept = forget_idle_buckets(session, delivery_rate=per_second, now=clock.utcnow())
    assert kept == 0 and asyncio.run(one()) > 0, "its next message is half a day away"


def test_a_count_over_a_window_longer_than_a_day_is_refused(engine: Engine) -> None:
    with transaction(engine) as session, pytest.raises(ValueError, match="LONGEST_WINDOW"):
        check_and_count(session, "k", limit=10, window=timedelta(days=7))


def test_several_counts_at_once_take_from_each_or_leave_all_as_they_were(
    engine: Engine, clock: Clock
) -> None:
    # Three buckets counted in one go (on PostgreSQL, one pipeline): every hit counted while
    # all have room; when one is empty, the refusal names its wait and, with the transaction
    # rolled back, the others keep their tokens.
    counts = [("ip", 5, HOUR), ("address", 2, HOUR), ("address-day", 3, DAY)]

    def hit() -> int | None:
        try:
            with transaction(engine) as session:
                check_and_count_all(session, counts, now=clock.utcnow())
        except RateLimited as limited:
            return limited.retry_after
        return None

    def left() -> dict[str, float]:
        with transaction(engine) as session:
            return {b.key: b.tokens for b in session.exec(select(RateBucket))}

    assert [hit(), hit()] == [None, None]
    assert left() == {"ip": 3, "address": 0, "address-day": 1}
    assert hit() == 1800  # the address's bucket: one hit per half hour
    assert left() == {"ip": 3, "address": 0, "address-day": 1}

    with transaction(engine) as session:
        got = take_all(
            session,
            [Ask("ip", 5, 5 / 3600, want=2), Ask("address-day", 3, 3 / 86400, want=2, least=1)],
            now=clock.utcnow(),
        )
    assert [(t.granted, round(t.tokens)) for t in got] == [(2, 1), (1, 0)]


def test_a_take_the_database_refuses_raises_what_sqlalchemy_would(
    engine: Engine, clock: Clock
) -> None:
    # The takes run on the driver's own cursor; a database error must still come out as
    # SQLAlchemy's (the web layer answers its OperationalError 503, a driver's error 500).
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's lock timeout")
    counts = [("ip", 5, HOUR), ("address", 2, HOUR)]
    with transaction(engine) as holder:
        check_and_count_all(holder, counts, now=clock.utcnow())  # holds both rows' locks
        with pytest.raises(OperationalError) as refused, transaction(engine) as waiter:
            waiter.execute(text("SET LOCAL lock_timeout = '100ms'"))
            check_and_count_all(waiter, counts, now=clock.utcnow())
    assert "lock timeout" in str(refused.value.orig)
    with transaction(engine) as session:  # the holder's count stands, the waiter's does not
        assert {b.key: b.tokens for b in session.exec(select(RateBucket))} == {
            "ip": 4,
            "address": 1,
        }

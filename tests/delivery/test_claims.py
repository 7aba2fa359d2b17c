"""Claims late in a send cost what they take: the due rows are read in the claim index's own
order, the longest waiting first, never by scanning past the rows already sent (which made
each claim of a million-reader send O(N), and the send O(N²))."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.config import Settings
from service.db import transaction
from service.delivery import ledger
from service.models import Delivery, MailStatus
from tests import processes
from tests.daily import start_seed_send
from tests.helpers import statements

LEASE = dt.timedelta(minutes=1)


def test_a_claim_late_in_a_send_reads_the_claim_index_in_order_without_sorting(
    engine: Engine, settings: Settings
) -> None:
    processes.add_readers(engine, 2_000)
    send = start_seed_send(engine, settings)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=1)
    with transaction(engine) as session:  # most of the send is already out
        session.execute(
            update(Delivery)
            .where(col(Delivery.id) <= 1_900)
            .values(status=MailStatus.sent, sent_at=now)
        )
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE deliveries"))
    with statements(engine) as seen, transaction(engine) as session:
        claims = ledger.claim_batch(
            session, send_id=send.id or 0, worker="w", now=now, limit=50, lease=LEASE
        )
    assert sorted(c.id for c in claims) == list(range(1_901, 1_951))
    [(due, parameters)] = [(s, p) for s, p in seen if "next_attempt_at <=" in s]
    plan = explained(engine, due, parameters)
    assert "ix_deliveries_claim" in plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_rows_whose_worker_vanished_are_claimed_before_due_ones(
    engine: Engine, settings: Settings
) -> None:
    processes.add_readers(engine, 10)
    send = start_seed_send(engine, settings)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=1)
    with transaction(engine) as session:  # a crashed worker's lease on rows 7 and 8 ran out
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_([7, 8]))
            .values(status=MailStatus.sending, claimed_by="gone", lease_until=now - LEASE)
        )
    with transaction(engine) as session:
        claims = ledger.claim_batch(
            session, send_id=send.id or 0, worker="w", now=now, limit=4, lease=LEASE
        )
    assert sorted(c.id for c in claims) == [1, 2, 7, 8]  # not 1-4: the abandoned come first


def explained(engine: Engine, statement: str, parameters: object) -> str:
    """The database's plan for `statement` (run, then rolled back, on PostgreSQL)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            rows = conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters).all()
        else:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        conn.rollback()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


def test_renewing_leases_passes_over_rows_a_commit_holds_instead_of_waiting(
    engine: Engine, settings: Settings
) -> None:
    # The group commit marks rows sent while the lease keeper renews the same worker's rows:
    # when the renewal waited for the commit's rows, the two deadlocked on PostgreSQL.
    processes.add_readers(engine, 3)
    send = start_seed_send(engine, settings)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with transaction(engine) as session:
        claims = ledger.claim_batch(
            session, send_id=send.id or 0, worker="w", now=now, limit=3, lease=LEASE
        )
    first, *others = sorted(c.id for c in claims)
    later = now + 5 * LEASE
    with engine.connect() as commit:  # the group commit, holding the first row
        commit.execute(
            update(Delivery).where(col(Delivery.id) == first).values(status=MailStatus.sent)
        )
        with engine.connect() as keeper:
            if engine.dialect.name == "postgresql":  # a wait fails the test instead of hanging
                keeper.execute(text("SET lock_timeout = '2s'"))
            elif engine.dialect.name == "sqlite":  # one writer: the commit goes first
                commit.commit()
            ledger.renew(Session(bind=keeper), worker="w", until=later)
            keeper.commit()
        commit.commit()
    with transaction(engine) as session:
        leases = dict(
            session.execute(
                select(Delivery.id, Delivery.lease_until).where(col(Delivery.send_id) == send.id)
            ).all()
        )
    assert [leases[i] for i in others] == [later] * len(others)
    assert leases[first] != later  # passed over: it was being marked sent

"""The service's work in counts, read from the tables when asked: what /metrics shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, literal
from sqlmodel import Session, col, select

from .delivery import sends
from .delivery.ledger import GAVE_UP, UNBUILDABLE
from .models import (
    Bounce,
    Consent,
    Delivery,
    MailStatus,
    OutboxMail,
    Send,
    SendStatus,
)
from .overview import readers_by_status


@dataclass(frozen=True)
class WorkCounts:
    """Column deliveries or transactional mails by state, and the failed ones by reason."""

    # pending (never tried), deferred (waiting for a retry), sending, sent, failed, skipped;
    # for deliveries also cancelled (unsent rows of a send the operator cancelled)
    states: dict[str, int]
    # mailbox (the relay refused the recipient for good), retry-deadline, unbuildable
    failed: dict[str, int]


@dataclass(frozen=True)
class Figures:
    """Everything counted at one moment."""

    deliveries: WorkCounts
    outbox: WorkCounts
    readers: dict[str, int]  # by status, every status listed
    bounces: dict[tuple[str, str], int]  # by (kind, source)
    consents: dict[str, int]  # consent records by action: subscribe, confirm, unsubscribe, …
    latest_send: sends.SendSummary | None


def figures(session: Session) -> Figures:
    """Every count the service keeps, in a few grouped queries."""
    latest = sends.latest(session, 1)
    return Figures(
        deliveries=work_counts(session, Delivery),
        outbox=work_counts(session, OutboxMail),
        readers=readers_by_status(session),
        bounces={
            (kind, source): count
            for kind, source, count in session.execute(
                select(Bounce.kind, Bounce.source, func.count()).group_by(
                    col(Bounce.kind), col(Bounce.source)
                )
            )
        },
        consents=_counted_by(session, col(Consent.action)),
        latest_send=latest[0] if latest else None,
    )


def work_counts(session: Session, model: type[Delivery] | type[OutboxMail]) -> WorkCounts:
    """The rows of the ledger or of the outbox by state, and the failed ones by reason."""
    status = col(model.status)
    states: list[tuple[Any, Any]] = []
    if model is Delivery:
        cancelled = select(Send.id).where(col(Send.status) == SendStatus.cancelled)
        unsent = status.in_([MailStatus.pending, MailStatus.sending])
        states.append((and_(unsent, col(Delivery.send_id).in_(cancelled)), literal("cancelled")))
    retried = and_(status == MailStatus.pending, col(model.attempts) > 0)
    states.append((retried, literal("deferred")))
    # The ledger writes why in last_error: the relay's reply for a refused mailbox, or one of
    # the worker's own reasons (delivery/ledger.py).
    error = col(model.last_error)
    reason = case(
        (status != MailStatus.failed, literal("")),
        (error.startswith(GAVE_UP), literal("retry-deadline")),
        (error.startswith(UNBUILDABLE), literal("unbuildable")),
        else_=literal("mailbox"),
    )
    # Grouped outside a subquery: PostgreSQL does not see two CASEs with parameters as equal.
    rows = select(case(*states, else_=status).label("state"), reason.label("reason")).subquery()
    counts = session.execute(
        select(rows.c.state, rows.c.reason, func.count()).group_by(rows.c.state, rows.c.reason)
    )
    by_state: dict[str, int] = {}
    failed: dict[str, int] = {}
    for state, why, count in counts:
        by_state[state] = by_state.get(state, 0) + count
        if why:
            failed[why] = failed.get(why, 0) + count
    return WorkCounts(by_state, failed)


def _counted_by(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column))
    return {str(key): count for key, count in rows}

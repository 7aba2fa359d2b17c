"""Leased work, shared by the outbox and the delivery ledger: which rows may be claimed now,
and which a worker still owns. A row is `pending` until its next attempt is due, `sending`
while a worker holds its lease, and free again when that lease runs out (its worker died)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from ..models import MailStatus


def due_or_abandoned(table: Any, now: dt.datetime) -> ColumnElement[bool]:
    """Rows of `table` (OutboxMail, Delivery) that a worker may claim at `now`: pending and
    due, or claimed by a worker whose lease ran out."""
    due = and_(table.status == MailStatus.pending, table.next_attempt_at <= now)
    abandoned = and_(table.status == MailStatus.sending, table.lease_until < now)
    return or_(due, abandoned)


def owned_by(table: Any, worker: Any) -> ColumnElement[bool]:
    """Rows `worker` still holds: claimed by it and not yet finished (`worker` may be a bound
    parameter, for statements built once)."""
    return and_(table.claimed_by == worker, table.status == MailStatus.sending)

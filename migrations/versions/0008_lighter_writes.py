"""fewer writes per row: the ledger's sent_at index covers sent rows only (a send's snapshot
writes a million rows without a sent_at); the ledger's foreign key to subscribers goes (checking
it locked and rewrote every reader's row during a snapshot, ~40 % of its time on PostgreSQL;
readers are never deleted, an erased one keeps its row); the subscribers' status index, a
prefix of ix_subscribers_status_id, goes; the claim index ends with the id, so that a claim
reads the due rows in its own order (next_attempt_at, id) and stops at its batch

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SENT = sa.text("sent_at IS NOT NULL")
# SQLite's foreign keys have no names: batch mode names the reflected ones by this.
NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _subscriber_key() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "deliveries_subscriber_id_fkey"
    return "fk_deliveries_subscriber_id_subscribers"


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None, naming_convention=NAMES) as batch_op:
        batch_op.drop_constraint(_subscriber_key(), type_="foreignkey")
        batch_op.drop_index("ix_deliveries_claim")
        batch_op.create_index(
            "ix_deliveries_claim", ["send_id", "status", "next_attempt_at", "id"], unique=False
        )
        batch_op.drop_index("ix_deliveries_sent_at")
        batch_op.create_index(
            "ix_deliveries_sent_at",
            ["send_id", "sent_at"],
            unique=False,
            postgresql_where=SENT,
            sqlite_where=SENT,
        )
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_index("ix_subscribers_status")


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.create_index("ix_subscribers_status", ["status"], unique=False)
    with op.batch_alter_table("deliveries", schema=None, naming_convention=NAMES) as batch_op:
        batch_op.drop_index("ix_deliveries_sent_at")
        batch_op.create_index("ix_deliveries_sent_at", ["send_id", "sent_at"], unique=False)
        batch_op.drop_index("ix_deliveries_claim")
        batch_op.create_index(
            "ix_deliveries_claim", ["send_id", "status", "next_attempt_at"], unique=False
        )
        batch_op.create_foreign_key(_subscriber_key(), "subscribers", ["subscriber_id"], ["id"])

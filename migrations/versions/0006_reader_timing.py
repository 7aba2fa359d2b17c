"""the reader's choice: time zone, cadence and digest weekday; due times in the ledger;
weekly digest sends

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 22:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('timezone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column('cadence', sa.String(length=16), nullable=False, server_default='daily')
        )
        batch_op.add_column(
            sa.Column('digest_weekday', sa.Integer(), nullable=False, server_default='7')
        )
        batch_op.create_index(
            'ix_subscribers_status_cadence_zone', ['status', 'cadence', 'timezone'], unique=False
        )
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('kind', sa.String(length=16), nullable=False, server_default='column')
        )
        batch_op.add_column(
            sa.Column('week', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True)
        )
        batch_op.alter_column('column_id', existing_type=sa.Integer(), nullable=True)
        batch_op.create_unique_constraint('uq_sends_week', ['week'])
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('due_at', sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column('zone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column('contents', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('contents')
        batch_op.drop_column('zone')
        batch_op.drop_column('due_at')
    op.execute("DELETE FROM deliveries WHERE send_id IN (SELECT id FROM sends WHERE kind = 'digest')")
    op.execute("DELETE FROM sends WHERE kind = 'digest'")
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_constraint('uq_sends_week', type_='unique')
        batch_op.alter_column('column_id', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('week')
        batch_op.drop_column('kind')
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.drop_index('ix_subscribers_status_cadence_zone')
        batch_op.drop_column('digest_weekday')
        batch_op.drop_column('cadence')
        batch_op.drop_column('timezone')

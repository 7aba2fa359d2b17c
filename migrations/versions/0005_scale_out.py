"""scale out: token buckets shared by every process, the relay that took each message

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 18:25:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'rate_buckets',
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column('tokens', sa.Float(), nullable=False),
        sa.Column('granted', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('relay', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True)
        )
    with op.batch_alter_table('rate_hits', schema=None) as batch_op:
        batch_op.drop_index('ix_rate_hits_key_at')
    op.drop_table('rate_hits')


def downgrade() -> None:
    op.create_table(
        'rate_hits',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('rate_hits', schema=None) as batch_op:
        batch_op.create_index('ix_rate_hits_key_at', ['key', 'at'], unique=False)
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('relay')
    op.drop_table('rate_buckets')

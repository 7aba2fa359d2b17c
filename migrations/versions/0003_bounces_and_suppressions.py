"""bounces and the suppression list

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 15:45:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'bounces',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column('subscriber_id', sa.Integer(), nullable=True),
        sa.Column('delivery_id', sa.BigInteger(), nullable=True),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column('diagnostic', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.Column('raw_size', sa.Integer(), nullable=False),
        sa.Column('report_id', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column('raw', sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(['subscriber_id'], ['subscribers.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('report_id'),
    )
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounces_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounces_subscriber_id'), ['subscriber_id'], unique=False)
    op.create_table(
        'suppressions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('address_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('address_hash'),
    )


def downgrade() -> None:
    op.drop_table('suppressions')
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounces_subscriber_id'))
        batch_op.drop_index(batch_op.f('ix_bounces_received_at'))
    op.drop_table('bounces')

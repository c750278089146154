"""audit hash version: the entry hash of new events covers the signer

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Events written before this revision keep version 1 (their entry hash does not
cover ``signer``); events written after it are version 2, whose entry hash
covers ``hash_version`` and ``signer``, so stripping or swapping a signature
breaks the chain without any key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hash_version', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('hash_version')

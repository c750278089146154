"""vectors listing index: newest-first pages of every vector without sorting the table

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

`safegene serve` lists vectors newest first (created_at, then id) a page at a
time; with this index the first pages of 100,000 vectors are read in index
order instead of sorting the whole table on every request.
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('vectors', schema=None) as batch_op:
        batch_op.create_index('ix_vectors_created_at_id', ['created_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('vectors', schema=None) as batch_op:
        batch_op.drop_index('ix_vectors_created_at_id')

"""initial catalog schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('tool_version', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.String(length=40), nullable=False),
    sa.Column('vector_hash', sa.String(length=64), nullable=True),
    sa.Column('target_hash', sa.String(length=64), nullable=True),
    sa.Column('output_hash', sa.String(length=64), nullable=True),
    sa.Column('payload_json', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('entry_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    sa.UniqueConstraint('entry_hash', name=op.f('uq_audit_events_entry_hash')),
    sa.UniqueConstraint('seq', name=op.f('uq_audit_events_seq')),
    sa.UniqueConstraint('uid', name=op.f('uq_audit_events_uid'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_actor'), ['actor'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_output_hash'), ['output_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_target_hash'), ['target_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_vector_hash'), ['vector_hash'], unique=False)

    op.create_table('blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('codec', sa.String(length=32), nullable=False),
    sa.Column('raw_size', sa.BigInteger(), nullable=False),
    sa.Column('stored_size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_blobs'))
    )
    op.create_table('families',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('model_type', sa.String(length=64), nullable=False),
    sa.Column('architecture', sa.String(length=128), nullable=False),
    sa.Column('num_layers', sa.Integer(), nullable=False),
    sa.Column('hidden_size', sa.Integer(), nullable=False),
    sa.Column('vocab_size', sa.Integer(), nullable=False),
    sa.Column('key_json', sa.Text(), nullable=False),
    sa.Column('manifest_hash', sa.String(length=64), nullable=False),
    sa.Column('layer_templates', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_families'))
    )
    with op.batch_alter_table('families', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_families_model_type'), ['model_type'], unique=False)

    op.create_table('probe_sets',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('num_probes', sa.Integer(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_probe_sets'))
    )
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('family_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('manifest_hash', sa.String(length=64), nullable=False),
    sa.Column('dtype', sa.String(length=32), nullable=False),
    sa.Column('num_tensors', sa.Integer(), nullable=False),
    sa.Column('num_params', sa.BigInteger(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['family_id'], ['families.id'], name=op.f('fk_checkpoints_family_id_families')),
    sa.ForeignKeyConstraint(['parent_id'], ['checkpoints.id'], name=op.f('fk_checkpoints_parent_id_checkpoints')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoints')),
    sa.UniqueConstraint('hash', name=op.f('uq_checkpoints_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_checkpoints_name'))
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_family_id'), ['family_id'], unique=False)

    op.create_table('vectors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('family_id', sa.String(length=64), nullable=False),
    sa.Column('aligned_id', sa.Integer(), nullable=True),
    sa.Column('degraded_id', sa.Integer(), nullable=True),
    sa.Column('encoding', sa.String(length=32), nullable=False),
    sa.Column('tensor_scope', sa.String(length=32), nullable=False),
    sa.Column('num_layers', sa.Integer(), nullable=False),
    sa.Column('raw_size', sa.BigInteger(), nullable=False),
    sa.Column('stored_size', sa.BigInteger(), nullable=False),
    sa.Column('meta_json', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['aligned_id'], ['checkpoints.id'], name=op.f('fk_vectors_aligned_id_checkpoints')),
    sa.ForeignKeyConstraint(['degraded_id'], ['checkpoints.id'], name=op.f('fk_vectors_degraded_id_checkpoints')),
    sa.ForeignKeyConstraint(['family_id'], ['families.id'], name=op.f('fk_vectors_family_id_families')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vectors')),
    sa.UniqueConstraint('hash', name=op.f('uq_vectors_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_vectors_name'))
    )
    with op.batch_alter_table('vectors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vectors_family_id'), ['family_id'], unique=False)
        batch_op.create_index('ix_vectors_family_id_created_at', ['family_id', 'created_at'], unique=False)

    op.create_table('recalibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vector_id', sa.Integer(), nullable=False),
    sa.Column('target_hash', sa.String(length=64), nullable=False),
    sa.Column('shots_hash', sa.String(length=64), nullable=False),
    sa.Column('settings_hash', sa.String(length=64), nullable=False),
    sa.Column('settings_json', sa.Text(), nullable=False),
    sa.Column('coefficients_json', sa.Text(), nullable=False),
    sa.Column('losses_json', sa.Text(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['shots_hash'], ['probe_sets.hash'], name=op.f('fk_recalibrations_shots_hash_probe_sets')),
    sa.ForeignKeyConstraint(['vector_id'], ['vectors.id'], name=op.f('fk_recalibrations_vector_id_vectors'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recalibrations')),
    sa.UniqueConstraint('vector_id', 'target_hash', 'shots_hash', 'settings_hash', name=op.f('uq_recalibrations_vector_id'))
    )
    op.create_table('vector_layers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vector_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('layer_index', sa.Integer(), nullable=True),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('tensor_names', sa.Text(), nullable=False),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('norm', sa.Float(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('safety_gain', sa.Float(), nullable=True),
    sa.Column('task_cost', sa.Float(), nullable=True),
    sa.Column('selected', sa.Boolean(), nullable=False),
    sa.Column('probe_set_hash', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blobs.sha256'], name=op.f('fk_vector_layers_blob_sha256_blobs')),
    sa.ForeignKeyConstraint(['probe_set_hash'], ['probe_sets.hash'], name=op.f('fk_vector_layers_probe_set_hash_probe_sets')),
    sa.ForeignKeyConstraint(['vector_id'], ['vectors.id'], name=op.f('fk_vector_layers_vector_id_vectors'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vector_layers')),
    sa.UniqueConstraint('vector_id', 'position', name=op.f('uq_vector_layers_vector_id'))
    )
    with op.batch_alter_table('vector_layers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vector_layers_blob_sha256'), ['blob_sha256'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('vector_layers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vector_layers_blob_sha256'))

    op.drop_table('vector_layers')
    op.drop_table('recalibrations')
    with op.batch_alter_table('vectors', schema=None) as batch_op:
        batch_op.drop_index('ix_vectors_family_id_created_at')
        batch_op.drop_index(batch_op.f('ix_vectors_family_id'))

    op.drop_table('vectors')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_family_id'))

    op.drop_table('checkpoints')
    op.drop_table('probe_sets')
    with op.batch_alter_table('families', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_families_model_type'))

    op.drop_table('families')
    op.drop_table('blobs')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_vector_hash'))
        batch_op.drop_index(batch_op.f('ix_audit_events_target_hash'))
        batch_op.drop_index(batch_op.f('ix_audit_events_output_hash'))
        batch_op.drop_index(batch_op.f('ix_audit_events_kind'))
        batch_op.drop_index(batch_op.f('ix_audit_events_actor'))

    op.drop_table('audit_events')

"""The catalog's ORM. Rows never leave ``registry/``: the API returns the frozen
records of :mod:`registry.records`. The schema changes only through Alembic
revisions in ``migrations/``; a drift test compares the two.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, query_expression, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HASH = String(64)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Family(Base):
    __tablename__ = "families"

    id: Mapped[str] = mapped_column(HASH, primary_key=True)
    model_type: Mapped[str] = mapped_column(String(64), index=True)
    architecture: Mapped[str] = mapped_column(String(128))
    num_layers: Mapped[int] = mapped_column(Integer)
    hidden_size: Mapped[int] = mapped_column(Integer)
    vocab_size: Mapped[int] = mapped_column(Integer)
    key_json: Mapped[str] = mapped_column(Text)
    manifest_hash: Mapped[str] = mapped_column(HASH)
    layer_templates: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(HASH, unique=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("families.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    manifest_hash: Mapped[str] = mapped_column(HASH)
    dtype: Mapped[str] = mapped_column(String(32))
    num_tensors: Mapped[int] = mapped_column(Integer)
    num_params: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    family: Mapped[Family] = relationship()


class Blob(Base):
    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(HASH, primary_key=True)
    codec: Mapped[str] = mapped_column(String(32))
    raw_size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    # sha256 of the stored file as the store wrote it from its payload, or once it
    # passed the full check (decoded to its payload) or came from a verified
    # bundle; NULL: not yet. See BlobStore.get.
    stored_sha256: Mapped[str | None] = mapped_column(HASH, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Vector(Base):
    __tablename__ = "vectors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    hash: Mapped[str] = mapped_column(HASH, unique=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("families.id"), index=True)
    aligned_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"), nullable=True)
    degraded_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"), nullable=True)
    encoding: Mapped[str] = mapped_column(String(32))
    tensor_scope: Mapped[str] = mapped_column(String(32))
    num_layers: Mapped[int] = mapped_column(Integer)
    raw_size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    meta_json: Mapped[str] = mapped_column(Text, default="{}")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    family: Mapped[Family] = relationship()
    aligned: Mapped[Checkpoint | None] = relationship(foreign_keys=[aligned_id])
    degraded: Mapped[Checkpoint | None] = relationship(foreign_keys=[degraded_id])
    layers: Mapped[list[VectorLayer]] = relationship(
        back_populates="vector", order_by="VectorLayer.position", cascade="all, delete-orphan"
    )
    # Not columns: set only by a query that asks for them (``resolve_vector(counted=True)``), else None.
    num_recalibrations: Mapped[int | None] = query_expression()
    num_patches: Mapped[int | None] = query_expression()

    __table_args__ = (Index("ix_vectors_family_id_created_at", "family_id", "created_at"),
                      Index("ix_vectors_created_at_id", "created_at", "id"))


class VectorLayer(Base):
    __tablename__ = "vector_layers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    layer_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    label: Mapped[str] = mapped_column(String(200))
    tensor_names: Mapped[str] = mapped_column(Text)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    norm: Mapped[float] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    safety_gain: Mapped[float | None] = mapped_column(Float, nullable=True)
    task_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    selected: Mapped[bool] = mapped_column(Boolean, default=True)
    probe_set_hash: Mapped[str | None] = mapped_column(
        ForeignKey("probe_sets.hash"), nullable=True
    )

    vector: Mapped[Vector] = relationship(back_populates="layers")

    __table_args__ = (UniqueConstraint("vector_id", "position"),)


class ProbeSet(Base):
    __tablename__ = "probe_sets"

    hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    num_probes: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Recalibration(Base):
    __tablename__ = "recalibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"))
    target_hash: Mapped[str] = mapped_column(HASH)
    shots_hash: Mapped[str] = mapped_column(ForeignKey("probe_sets.hash"))
    settings_hash: Mapped[str] = mapped_column(HASH)
    settings_json: Mapped[str] = mapped_column(Text)
    coefficients_json: Mapped[str] = mapped_column(Text)
    losses_json: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("vector_id", "target_hash", "shots_hash", "settings_hash"),
    )


class AuditEvent(Base):
    """One append-only entry of the hash chain; see :mod:`registry.audit`."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    tool_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[str] = mapped_column(String(40))
    vector_hash: Mapped[str | None] = mapped_column(HASH, nullable=True, index=True)
    target_hash: Mapped[str | None] = mapped_column(HASH, nullable=True, index=True)
    output_hash: Mapped[str | None] = mapped_column(HASH, nullable=True, index=True)
    payload_json: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(HASH)
    entry_hash: Mapped[str] = mapped_column(HASH, unique=True)
    # 1: entry_hash covers the row without signer (events from before revision 0004);
    # 2: it also covers hash_version and signer, so a signature cannot be stripped unseen.
    hash_version: Mapped[int] = mapped_column(Integer, server_default="1")
    # Optional Ed25519 signature over entry_hash: who vouches for the entry (signer is
    # covered by entry_hash from hash_version 2 on; the signature signs entry_hash).
    signer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Setting(Base):
    """Catalog-wide settings every host reads: ``store.url`` (where the blobs live)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)

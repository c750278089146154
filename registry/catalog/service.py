"""The catalog service: engines and sessions, checkpoints and families.

Example:
    >>> cat = Catalog("sqlite:////tmp/sg/catalog.db")      # doctest: +SKIP
    >>> cat.ensure_schema(create=True)                    # doctest: +SKIP
    >>> ckpt = cat.add_model("toy/aligned", role="aligned")  # doctest: +SKIP
    >>> cat.get_family(ckpt.family).num_layers            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ScalarSelect, Select, bindparam, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from ..checkpoints.family import FamilyKey, family_key, manifest_hash
from ..checkpoints.reader import Checkpoint
from ..errors import AlreadyExistsError, InvalidInputError
from . import db
from . import models as m
from .queries import (
    check_name,
    default_name,
    free_name,
    get_or_create_family,
    resolve_checkpoint,
    resolve_family,
    search_condition,
)
from .records import CheckpointRecord, FamilyRecord, FamilySummary, RecalibrationRecord

T = TypeVar("T")
ROLES = ("aligned", "degraded", "base", "task", "patched")


def current_actor() -> str:
    """Who is acting: ``$SAFEGENE_ACTOR``, else ``user@host`` (recorded on rows and audit events)."""
    actor = os.environ.get("SAFEGENE_ACTOR")
    if actor:
        return actor[:200]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:200]


@dataclass(frozen=True)
class PendingCheckpoint:
    """A validated, hashed checkpoint folder, ready to be inserted."""

    ckpt: Checkpoint
    digest: str
    key: FamilyKey
    manifest_hash: str
    name: str | None
    role: str

    @classmethod
    def read(cls, path: str | Path, *, name: str | None, role: str) -> PendingCheckpoint:
        if role not in ROLES:
            raise InvalidInputError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if name is not None:
            check_name(name, "checkpoint name")
        return cls.of(Checkpoint(path), name=name, role=role)

    @classmethod
    def of(cls, ckpt: Checkpoint, *, name: str | None, role: str, digest: str | None = None) -> PendingCheckpoint:
        """From an opened checkpoint (``digest``: its content hash, when already computed)."""
        return cls(ckpt, digest or ckpt.content_hash(), family_key(ckpt.config, ckpt.names()),
                   manifest_hash(ckpt.manifest()), name, role)  # fmt: skip


class Catalog:
    """The SQL catalog: sessions, checkpoints and families.

    Args:
        url: a ``sqlite:///PATH`` or ``postgresql+psycopg://`` URL. Nothing is
            created or checked until :meth:`ensure_schema` or :meth:`upgrade`.

    Other services run their own reads and writes through :meth:`read` and
    :meth:`transaction`, and add checkpoint rows inside their transactions
    with :meth:`insert_checkpoint`.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = db.create_catalog_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite: reads start deferred on their own engine, so they never queue behind a writer.
        # PostgreSQL: reads run in autocommit, on the same pool. Under its READ COMMITTED every
        # statement takes its own snapshot either way, so a read session gains nothing from
        # BEGIN … COMMIT but two round trips (a third of a small read's time: the web API).
        self._read_engine: Engine = (
            db.create_catalog_engine(url, for_reads=True) if db.is_sqlite(self.engine)
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )  # fmt: skip
        self._read_factory = sessionmaker(self._read_engine, expire_on_commit=False)

    # --- schema and sessions ---------------------------------------------------

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def ensure_schema(self, *, create: bool) -> None:
        """Create an empty catalog when ``create`` and there is none; refuse an outdated one.

        Raises:
            SchemaOutdatedError: the catalog needs `safegene db upgrade`.
        """
        db.ensure_schema(self.engine, create=create)

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Run the migrations up to ``revision``; returns (revision before, revision after)."""
        return db.upgrade(self.engine, revision)

    def close(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()

    def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction (retried on lock timeouts: ``fn`` must be re-runnable)."""
        return db.run_in_transaction(self._factory, fn)

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a read-only session."""
        with db.session_scope(self._read_factory) as session:
            return fn(session)

    def writers_lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        """The store's writers (shared) / collector (exclusive) lock, seen by every host of this catalog."""
        return db.writers_lock(self.engine, exclusive=exclusive)

    def get_setting(self, key: str) -> str | None:
        return self.read(lambda s: s.scalar(select(m.Setting.value).where(m.Setting.key == key)))

    def set_setting(self, key: str, value: str) -> None:
        def write(session: Session) -> None:
            row = session.get(m.Setting, key)
            if row is None:
                session.add(m.Setting(key=key, value=value))
            else:
                row.value = value

        self.transaction(write)

    def count_blobs(self) -> int:
        return self.read(lambda s: int(s.scalar(select(func.count()).select_from(m.Blob)) or 0))

    # --- checkpoints -------------------------------------------------------------

    def add_model(self, path: str | Path, *, name: str | None = None, role: str = "task", parent: str | None = None,
                  progress: Callable[[str], None] | None = None) -> CheckpointRecord:  # fmt: skip
        """Register a checkpoint folder (idempotent on its content hash).

        Args:
            path: a Hugging Face folder with config.json and safetensors weights.
            name: catalog name; default the folder's name (suffixed when taken).
            role: one of aligned, degraded, base, task, patched.
            parent: REF of the checkpoint this one was derived from.
            progress: told what is being done (hashing can take a while).

        Returns:
            The checkpoint's record (the existing one when already registered).

        Raises:
            InvalidCheckpointError: unreadable or unsafe folder; nothing is written.
            AlreadyExistsError: ``name`` is taken by another checkpoint.
        """
        if progress:
            progress("hashing tensors")
        return self.add_checkpoint(PendingCheckpoint.read(path, name=name, role=role), parent=parent)

    def add_checkpoint(self, pending: PendingCheckpoint, *, parent: str | None = None) -> CheckpointRecord:
        """Insert an already hashed checkpoint in a transaction of its own (see :meth:`insert_checkpoint`)."""
        return self.transaction(lambda s: self.insert_checkpoint(s, pending, parent=parent))

    def insert_checkpoint(self, session: Session, ck: PendingCheckpoint, *, parent: str | None = None,
                          record_path: Path | None = None) -> CheckpointRecord:  # fmt: skip
        """Get-or-create the checkpoint row inside the caller's transaction.

        Args:
            session: the caller's transaction.
            ck: the hashed checkpoint.
            parent: REF of the checkpoint it derives from.
            record_path: the path to record (default: where ``ck`` was read).

        Raises:
            AlreadyExistsError: ``ck.name`` names another checkpoint, or ``ck`` is
                registered under another name.
        """
        existing = session.scalar(select(m.Checkpoint).where(m.Checkpoint.hash == ck.digest))
        if existing is not None:
            if ck.name is not None and ck.name != existing.name:
                raise AlreadyExistsError(
                    f"this checkpoint is already registered as {existing.name!r} "
                    f"(hash {ck.digest[:12]}); refer to it by that name"
                )
            return self.checkpoint_record(session, existing)
        path = record_path or ck.ckpt.path
        fam = get_or_create_family(session, ck.key, ck.manifest_hash, ck.ckpt.names())
        final = ck.name or free_name(session, default_name(path), ck.digest)
        named = session.scalar(select(m.Checkpoint).where(m.Checkpoint.name == ck.name)) if ck.name else None
        if named is not None and named.hash == ck.digest:
            # Registered under this very name by a concurrent writer that committed
            # between the hash lookup above and this one (READ COMMITTED): the same row.
            return self.checkpoint_record(session, named)
        if named is not None:
            raise AlreadyExistsError(
                f"checkpoint name {ck.name!r} is taken by another checkpoint; choose another --name"
            )
        parent_row = resolve_checkpoint(session, parent) if parent else None
        row = m.Checkpoint(
            hash=ck.digest,
            name=final,
            family_id=fam.id,
            role=ck.role,
            path=str(path),
            manifest_hash=ck.manifest_hash,
            dtype=ck.ckpt.dtype_summary(),
            num_tensors=len(ck.ckpt.tensors),
            num_params=ck.ckpt.num_params(),
            total_bytes=ck.ckpt.total_bytes(),
            parent_id=parent_row.id if parent_row else None,
            created_by=current_actor(),
        )
        session.add(row)
        session.flush()
        return self.checkpoint_record(session, row)

    def get_model(self, ref: str) -> CheckpointRecord:
        """A checkpoint by name or hash prefix.

        Raises:
            CheckpointNotFoundError: no such checkpoint.
            AmbiguousReferenceError: the prefix names several.
        """
        return self.read(lambda s: self.checkpoint_record(s, resolve_checkpoint(s, ref)))

    def list_models(self, *, family: str | None = None, role: str | None = None, offset: int = 0,
                    limit: int | None = None) -> list[CheckpointRecord]:  # fmt: skip
        """Checkpoints, oldest first (ties by id), optionally of one family (REF) or role; one page of
        ``limit`` after ``offset`` when given."""

        def q(session: Session) -> list[CheckpointRecord]:
            stmt = select(m.Checkpoint).order_by(m.Checkpoint.created_at, m.Checkpoint.id)
            stmt = stmt.offset(offset or None).limit(limit)
            if family:
                stmt = stmt.where(m.Checkpoint.family_id == resolve_family(session, family).id)
            if role:
                stmt = stmt.where(m.Checkpoint.role == role)
            return [self.checkpoint_record(session, r) for r in session.scalars(stmt)]

        return self.read(q)

    def models_by_hash(self, hashes: list[str]) -> dict[str, CheckpointRecord]:
        """The registered checkpoints among these content hashes, by hash (unknown ones are absent)."""
        wanted = sorted({h for h in hashes if h})

        def q(session: Session) -> dict[str, CheckpointRecord]:
            if not wanted:
                return {}
            rows = session.scalars(select(m.Checkpoint).where(m.Checkpoint.hash.in_(wanted)))
            return {r.hash: self.checkpoint_record(session, r) for r in rows}

        return self.read(q)

    def recalibrations_of(self, vector_hash: str, *, limit: int = 100) -> list[RecalibrationRecord]:
        """The cached fits of a vector (by full hash), newest first."""
        stmt = (select(m.Recalibration, m.Vector.name).join(m.Vector).where(m.Vector.hash == vector_hash)
                .order_by(m.Recalibration.created_at.desc(), m.Recalibration.id.desc()).limit(limit))  # fmt: skip
        return self.read(lambda s: [RecalibrationRecord.from_row(r, name) for r, name in s.execute(stmt).all()])

    def search_models(self, text: str, *, limit: int = 20) -> list[CheckpointRecord]:
        """Checkpoints whose name contains ``text`` (case-insensitive) or whose hash starts with it."""
        cond = search_condition(text, [m.Checkpoint.name], m.Checkpoint.hash)
        if cond is None:
            return []
        stmt = select(m.Checkpoint).where(cond).order_by(m.Checkpoint.created_at, m.Checkpoint.id).limit(limit)
        return self.read(lambda s: [self.checkpoint_record(s, r) for r in s.scalars(stmt)])

    @staticmethod
    def checkpoint_record(session: Session, row: m.Checkpoint) -> CheckpointRecord:
        """A row's record; its parent's hash comes from the session (no query where the parent is loaded)."""
        parent = session.get(m.Checkpoint, row.parent_id) if row.parent_id else None
        return CheckpointRecord.from_row(row, parent=parent.hash if parent else None)

    # --- families ----------------------------------------------------------------

    def list_families(self) -> list[FamilyRecord]:
        """Every family with its checkpoint and vector counts."""

        def q(session: Session) -> list[FamilyRecord]:
            ck = dict(session.execute(
                select(m.Checkpoint.family_id, func.count()).group_by(m.Checkpoint.family_id)).all())  # fmt: skip
            vc = dict(session.execute(select(m.Vector.family_id, func.count()).group_by(m.Vector.family_id)).all())
            rows = session.scalars(select(m.Family).order_by(m.Family.model_type, m.Family.created_at))
            return [FamilyRecord.from_row(r, checkpoints=ck.get(r.id, 0), vectors=vc.get(r.id, 0)) for r in rows]

        return self.read(q)

    def families_page(self, *, offset: int = 0, limit: int = 50) -> list[FamilySummary]:
        """One page of families (by model type, then age, then id), counting only that page's rows.

        Summaries from plain rows: a listing needs neither the key nor the layer templates, and
        reading and decoding them was a third of the page's time."""
        params = {"offset": offset, "limit": limit}
        return self.read(lambda s: [FamilySummary.from_row(r) for r in s.execute(_families_page_stmt(), params)])

    def search_families(self, text: str, *, limit: int = 20) -> list[FamilyRecord]:
        """Families whose model type or architecture contains ``text``, or whose id starts with it."""
        cond = search_condition(text, [m.Family.model_type, m.Family.architecture], m.Family.id)
        if cond is None:
            return []
        stmt = select(m.Family).where(cond).order_by(m.Family.model_type, m.Family.created_at, m.Family.id)
        return self.read(lambda s: self._with_counts(s, stmt.limit(limit)))

    @staticmethod
    def _with_counts(session: Session, stmt: Select[Any]) -> list[FamilyRecord]:
        """The families ``stmt`` selects, each with its checkpoint and vector counts, in one query (a count
        per family by its index: an ``IN`` list of the page's ids was recompiled on every request)."""
        ck, vc = _family_counts()
        return [FamilyRecord.from_row(fam, checkpoints=n_ck, vectors=n_vec)
                for fam, n_ck, n_vec in session.execute(stmt.add_columns(ck, vc))]  # fmt: skip

    def get_family(self, ref: str) -> FamilyRecord:
        """A family by model type, architecture (when unique) or id prefix.

        Raises:
            FamilyNotFoundError: no such family.
            AmbiguousReferenceError: the reference names several.
        """

        def q(session: Session) -> FamilyRecord:
            row = resolve_family(session, ref)
            ck = session.scalar(select(func.count()).where(m.Checkpoint.family_id == row.id))
            vc = session.scalar(select(func.count()).where(m.Vector.family_id == row.id))
            return FamilyRecord.from_row(row, checkpoints=ck or 0, vectors=vc or 0)

        return self.read(q)


def _family_counts() -> tuple[ScalarSelect[int], ScalarSelect[int]]:
    """A family's checkpoint and vector counts, as subqueries correlated to the ``families`` row."""
    ck = (select(func.count()).select_from(m.Checkpoint).where(m.Checkpoint.family_id == m.Family.id)
          .correlate(m.Family).scalar_subquery())  # fmt: skip
    vc = (select(func.count()).select_from(m.Vector).where(m.Vector.family_id == m.Family.id)
          .correlate(m.Family).scalar_subquery())  # fmt: skip
    return ck, vc


@functools.cache
def _families_page_stmt() -> Select[*tuple[Any, ...]]:
    """Family summaries with their counts, by model type, age and id; ``offset`` and ``limit`` bound per call
    (built once: building it took a tenth of the page's time)."""
    f = m.Family
    ck, vc = _family_counts()
    return (select(f.id, f.model_type, f.architecture, f.num_layers, f.hidden_size, f.vocab_size, f.manifest_hash,
                   f.created_at, ck.label("num_checkpoints"), vc.label("num_vectors"))
            .order_by(f.model_type, f.created_at, f.id).offset(bindparam("offset")).limit(bindparam("limit")))  # fmt: skip

"""The core of the registry handle: catalog + store under one home, checkpoints, families.

Example:
    >>> reg = Registry.open("/tmp/sg-home")            # doctest: +SKIP
    >>> ckpt = reg.add_model("toy/aligned", role="aligned")  # doctest: +SKIP
    >>> reg.get_family(ckpt.family).num_layers          # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .audit.signing import load_key
from .catalog import db
from .catalog import models as m
from .catalog.queries import (
    check_name,
    default_name,
    free_name,
    get_or_create_family,
    resolve_checkpoint,
    resolve_family,
)
from .catalog.records import CheckpointRecord, FamilyRecord
from .checkpoints.family import FamilyKey, family_key, manifest_hash
from .checkpoints.reader import Checkpoint
from .errors import AlreadyExistsError, InvalidInputError
from .store.blobs import BlobStore

T = TypeVar("T")
ROLES = ("aligned", "degraded", "base", "task", "patched")


def default_home() -> Path:
    return Path(os.environ.get("SAFEGENE_HOME") or Path.home() / ".safegene").expanduser()


def current_actor() -> str:
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


@dataclass(frozen=True)
class InitResult:
    home: str
    db_url: str
    revision_before: str | None
    revision: str | None


class RegistryCore:
    """A catalog (SQL) and a blob store (directory) under one home.

    Args:
        home: registry home; default ``$SAFEGENE_HOME`` or ``~/.safegene``.
        db_url: catalog URL; default ``$SAFEGENE_DB_URL`` or a SQLite file in home.
        create: create an empty catalog on first use (an outdated one is never
            upgraded implicitly: that raises :class:`SchemaOutdatedError`).
    """

    def __init__(self, home: str | Path | None = None, db_url: str | None = None, *,
                 sign_key: str | Path | None = None) -> None:  # fmt: skip
        self.home = Path(home).expanduser() if home else default_home()
        self.db_url = db_url or os.environ.get("SAFEGENE_DB_URL") or (
            f"sqlite:///{(self.home / 'catalog.db').resolve()}"
        )
        self.engine = db.create_catalog_engine(self.db_url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = (db.create_catalog_engine(self.db_url, for_reads=True)
                             if db.is_sqlite(self.engine) else self.engine)  # fmt: skip
        self._read_factory = sessionmaker(self._read_engine, expire_on_commit=False)
        self.store = BlobStore(self.home / "store")
        # Ed25519 key that signs every audit event this handle appends (optional).
        self.sign_key: Any = load_key(Path(sign_key), private=True) if sign_key else None

    @classmethod
    def open(
        cls, home: str | Path | None = None, db_url: str | None = None, *, create: bool = True,
        sign_key: str | Path | None = None,
    ) -> Self:
        """Open a registry, creating home and an empty catalog when ``create``.

        ``sign_key``: PEM Ed25519 private key; every audit event appended through
        this handle is signed with it.
        """
        reg = cls(home, db_url, sign_key=sign_key)
        if create:
            reg.home.mkdir(parents=True, exist_ok=True)
            reg.store.ensure()
        db.ensure_schema(reg.engine, create=create)
        return reg

    def close(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema -------------------------------------------------------------

    def init(self) -> InitResult:
        """Create home, store and catalog, and run migrations (idempotent)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.store.ensure()
        before, after = db.upgrade(self.engine)
        return InitResult(str(self.home), self.safe_url, before, after)

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def transaction(self, fn: Callable[[Session], T]) -> T:
        return db.run_in_transaction(self._factory, fn)

    def read(self, fn: Callable[[Session], T]) -> T:
        with db.session_scope(self._read_factory) as session:
            return fn(session)

    # --- checkpoints ---------------------------------------------------------

    def add_model(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        role: str = "task",
        parent: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> CheckpointRecord:
        """Register a checkpoint folder (idempotent on its content hash).

        Args:
            path: a Hugging Face folder with config.json and safetensors weights.
            name: catalog name; default the folder's name (suffixed when taken).
            role: one of aligned, degraded, base, task, patched.
            parent: REF of the checkpoint this one was derived from.

        Returns:
            The checkpoint's record (the existing one when already registered).

        Raises:
            InvalidCheckpointError: unreadable or unsafe folder; nothing is written.
            AlreadyExistsError: ``name`` is taken by another checkpoint.
        """
        if progress:
            progress("hashing tensors")
        pending = PendingCheckpoint.read(path, name=name, role=role)
        return self.transaction(lambda s: self._insert_checkpoint(s, pending, parent=parent))

    def _insert_checkpoint(self, session: Session, ck: PendingCheckpoint, *, parent: str | None = None,
                           record_path: Path | None = None) -> CheckpointRecord:  # fmt: skip
        """Get-or-create the checkpoint row inside the caller's transaction."""
        existing = session.scalar(select(m.Checkpoint).where(m.Checkpoint.hash == ck.digest))
        if existing is not None:
            if ck.name is not None and ck.name != existing.name:
                raise AlreadyExistsError(
                    f"this checkpoint is already registered as {existing.name!r} "
                    f"(hash {ck.digest[:12]}); refer to it by that name"
                )
            return self._checkpoint_record(session, existing)
        path = record_path or ck.ckpt.path
        fam = get_or_create_family(session, ck.key, ck.manifest_hash, ck.ckpt.names())
        final = ck.name or free_name(session, default_name(path), ck.digest)
        named = session.scalar(select(m.Checkpoint).where(m.Checkpoint.name == ck.name)) if ck.name else None
        if named is not None and named.hash == ck.digest:
            # Registered under this very name by a concurrent writer that committed
            # between the hash lookup above and this one (READ COMMITTED): the same row.
            return self._checkpoint_record(session, named)
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
        return self._checkpoint_record(session, row)

    def get_model(self, ref: str) -> CheckpointRecord:
        return self.read(lambda s: self._checkpoint_record(s, resolve_checkpoint(s, ref)))

    def list_models(self, *, family: str | None = None, role: str | None = None) -> list[CheckpointRecord]:
        def q(session: Session) -> list[CheckpointRecord]:
            stmt = select(m.Checkpoint).order_by(m.Checkpoint.created_at, m.Checkpoint.id)
            if family:
                stmt = stmt.where(m.Checkpoint.family_id == resolve_family(session, family).id)
            if role:
                stmt = stmt.where(m.Checkpoint.role == role)
            return [self._checkpoint_record(session, r) for r in session.scalars(stmt)]

        return self.read(q)

    @staticmethod
    def _checkpoint_record(session: Session, row: m.Checkpoint) -> CheckpointRecord:
        parent = session.get(m.Checkpoint, row.parent_id) if row.parent_id else None
        return CheckpointRecord.from_row(row, parent=parent.hash if parent else None)

    # --- families ------------------------------------------------------------

    def list_families(self) -> list[FamilyRecord]:
        def q(session: Session) -> list[FamilyRecord]:
            ck = dict(
                session.execute(
                    select(m.Checkpoint.family_id, func.count()).group_by(m.Checkpoint.family_id)
                ).all()
            )
            vc = dict(
                session.execute(select(m.Vector.family_id, func.count()).group_by(m.Vector.family_id)).all()
            )
            rows = session.scalars(select(m.Family).order_by(m.Family.model_type, m.Family.created_at))
            return [
                FamilyRecord.from_row(r, checkpoints=ck.get(r.id, 0), vectors=vc.get(r.id, 0))
                for r in rows
            ]

        return self.read(q)

    def get_family(self, ref: str) -> FamilyRecord:
        def q(session: Session) -> FamilyRecord:
            row = resolve_family(session, ref)
            ck = session.scalar(select(func.count()).where(m.Checkpoint.family_id == row.id))
            vc = session.scalar(select(func.count()).where(m.Vector.family_id == row.id))
            return FamilyRecord.from_row(row, checkpoints=ck or 0, vectors=vc or 0)

        return self.read(q)



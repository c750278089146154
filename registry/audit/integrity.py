"""Audit queries, `verify` and `gc` (a Registry mixin)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .._core import RegistryCore
from .._faults import crashpoint
from ..catalog import models as m
from ..catalog.queries import resolve_checkpoint, resolve_family, resolve_vector
from ..catalog.records import AuditRecord
from ..checkpoints.provenance import read_patch_metadata
from ..checkpoints.reader import Checkpoint
from ..errors import EventNotFoundError, IntegrityCheckError, InvalidInputError
from ..store.atomic import LEASE_PREFIX, reclaim_partial
from .chain import ChainReport, check_vector_states, verify_chain
from .signing import load_key, public_hex


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    problems: list[str]
    blobs_checked: int
    events_checked: int
    removable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identification:
    event: str
    seq: int
    vector: str | None
    target: str | None
    output: str | None
    method: str  # "metadata" or "content-hash"
    coefficients: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GcReport:
    removed_blobs: list[str]
    removed_temp_files: list[str]
    freed_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AuditOps(RegistryCore):
    """Audit trail, verification and garbage collection."""

    def audit_log(self, *, model: str | None = None, vector: str | None = None, family: str | None = None,
                  kind: str | None = None, actor: str | None = None, since: str | None = None,
                  limit: int | None = None) -> list[AuditRecord]:  # fmt: skip
        def q(session: Session) -> list[AuditRecord]:
            stmt = select(m.AuditEvent).order_by(m.AuditEvent.seq)
            if model:
                h = resolve_checkpoint(session, model).hash
                stmt = stmt.where((m.AuditEvent.target_hash == h) | (m.AuditEvent.output_hash == h))
            if vector:
                stmt = stmt.where(m.AuditEvent.vector_hash == _vector_hash(session, vector))
            if family:
                fid = resolve_family(session, family).id
                stmt = stmt.where(
                    m.AuditEvent.vector_hash.in_(select(m.Vector.hash).where(m.Vector.family_id == fid))
                    | m.AuditEvent.target_hash.in_(select(m.Checkpoint.hash).where(m.Checkpoint.family_id == fid)))
            if kind:
                stmt = stmt.where(m.AuditEvent.kind == kind)
            if actor:
                stmt = stmt.where(m.AuditEvent.actor == actor)
            if since:
                stmt = stmt.where(m.AuditEvent.created_at >= _iso(since))
            rows = list(session.scalars(stmt))
            return [AuditRecord.from_row(r) for r in (rows[-limit:] if limit else rows)]

        return self.read(q)

    def audit_show(self, ref: str) -> AuditRecord:
        """An event by seq number, uid or uid prefix."""

        def q(session: Session) -> AuditRecord:
            row = None
            if ref.isdigit():
                row = session.scalar(select(m.AuditEvent).where(m.AuditEvent.seq == int(ref)))
            if row is None and len(ref) >= 4:
                rows = list(session.scalars(select(m.AuditEvent).where(m.AuditEvent.uid.startswith(ref)).limit(2)))
                row = rows[0] if len(rows) == 1 else None
            if row is None:
                raise EventNotFoundError(ref, "give a seq number or event id from `safegene audit log`")
            return AuditRecord.from_row(row)

        return self.read(q)

    def audit_verify(self, *, verify_key: str | Path | None = None) -> ChainReport:
        """Walk the chain; with ``verify_key`` (PEM public key) every event must carry its signature."""
        key_hex = public_hex(load_key(Path(verify_key), private=False)) if verify_key else None
        return self.read(lambda s: verify_chain(s, verify_key=key_hex))

    def audit_head(self) -> dict[str, Any]:
        rep = self.audit_verify()
        return {"length": rep.length, "head": rep.head, "ok": rep.ok}

    def identify(self, path: str | Path) -> Identification:
        """Find the patch event of a folder: metadata first, tensor content hash as fallback."""
        meta = read_patch_metadata(path)
        uid = meta.get("safegene.event")

        def q(session: Session) -> Identification:
            row = None
            method = "metadata"
            if uid:
                row = session.scalar(select(m.AuditEvent).where(m.AuditEvent.uid == uid))
            if row is None:
                method = "content-hash"
                digest = Checkpoint(path).content_hash()
                row = session.scalar(select(m.AuditEvent).where(m.AuditEvent.kind == "patch",
                                                                m.AuditEvent.output_hash == digest)
                                     .order_by(m.AuditEvent.seq.desc()).limit(1))  # fmt: skip
            if row is None:
                raise EventNotFoundError(str(path), "no patch event produced these tensors")
            rec = AuditRecord.from_row(row)
            return Identification(rec.uid, rec.seq, rec.vector_hash, rec.target_hash, rec.output_hash, method,
                                  rec.payload.get("coefficients", {}))  # fmt: skip

        return self.read(q)

    def verify(self, *, deep: bool = True, verify_key: str | Path | None = None) -> VerifyReport:
        """Re-hash every blob, check catalog ↔ store both ways, walk the audit chain."""
        problems: list[str] = []
        referenced = self.read(lambda s: {b.sha256: b for b in s.scalars(select(m.Blob))})
        layer_blobs = self.read(lambda s: set(s.scalars(select(m.VectorLayer.blob_sha256))))
        on_disk = set(self.store.iter_shas())
        for sha in sorted(set(referenced) | layer_blobs):
            if sha not in on_disk:
                problems.append(f"blob {sha[:12]}: in the catalog, missing from the store")
            elif deep:
                try:
                    row = referenced.get(sha)  # its raw size caps the decoding
                    self.store.get(sha, max_size=row.raw_size if row is not None else None)
                except IntegrityCheckError as exc:
                    problems.append(str(exc))
        for sha in sorted(layer_blobs - set(referenced)):
            problems.append(f"blob {sha[:12]}: used by a vector but has no catalog row")
        removable = [f"orphan blob {sha[:12]}" for sha in sorted(on_disk - set(referenced))]
        removable += [f"temp file {p.name}" for p in self.store.stale_temp_files(older_than_s=0)]
        chain = self.audit_verify(verify_key=verify_key)
        problems += chain.problems
        problems += self.read(check_vector_states)
        return VerifyReport(not problems, problems, len(on_disk), chain.length, removable)

    def gc(self, *, dry_run: bool = False, temp_age_s: float = 3600.0) -> GcReport:
        """Remove blobs no catalog row references, and temp files no live writer owns.

        A blob written by an extract still in flight has no row yet; blobs
        younger than ``temp_age_s`` are kept so gc never races a writer.
        """
        referenced = self.read(lambda s: set(s.scalars(select(m.Blob.sha256)))
                               | set(s.scalars(select(m.VectorLayer.blob_sha256))))  # fmt: skip
        cutoff = dt.datetime.now().timestamp() - temp_age_s
        removed, freed = [], 0
        for sha in self.store.iter_shas():
            path = self.store.path_for(sha)
            if sha in referenced or path.stat().st_mtime > cutoff:
                continue
            freed += path.stat().st_size
            removed.append(sha)
            if not dry_run:
                crashpoint("gc.delete-blob")
                self.store.delete(sha)
        temps = self.store.stale_temp_files(older_than_s=temp_age_s)
        for t in temps:
            freed += t.stat().st_size
            if not dry_run:
                crashpoint("gc.delete-temp")
                if t.name.startswith(LEASE_PREFIX):
                    reclaim_partial(t)
                t.unlink(missing_ok=True)
        return GcReport(removed, [t.name for t in temps], freed)


def _vector_hash(session: Session, ref: str) -> str:
    try:
        return resolve_vector(session, ref).hash
    except LookupError:
        if len(ref) == 64:
            return ref  # a removed vector is still in the audit log
        raise


def _iso(value: str) -> str:
    try:
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC).isoformat()
    except ValueError:
        raise InvalidInputError(f"--since {value!r} is not an ISO date/time") from None

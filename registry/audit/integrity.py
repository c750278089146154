"""The integrity service: `verify` (catalog ↔ store ↔ audit chain), `gc` and `identify`.

``gc`` and writers: a writer holds :meth:`BlobStore.writing` from its first blob
until the catalog rows that reference its blobs are committed; ``gc`` decides
what is unreferenced and deletes it under :meth:`BlobStore.collecting`, so it
never deletes a blob an extraction or import is about to reference.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .._faults import crashpoint
from ..catalog import models as m
from ..catalog.records import AuditRecord
from ..catalog.service import Catalog
from ..checkpoints.provenance import patch_metadata_from_header, read_patch_metadata
from ..checkpoints.reader import Checkpoint
from ..errors import EventNotFoundError, IntegrityCheckError
from ..store.atomic import LEASE_PREFIX, reclaim_partial
from ..store.base import StaleTemp, Store
from .log import AuditLog

_CHUNK = 500  # shas per IN (...) list


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


class Integrity:
    """Checks and repairs over the catalog, the store and the audit chain together.

    Args:
        catalog: the catalog whose rows reference the store's blobs.
        store: the blob store.
        audit: the audit log (chain walk, vector states, patch events).
    """

    def __init__(self, catalog: Catalog, store: Store, audit: AuditLog) -> None:
        self.catalog = catalog
        self.store = store
        self.audit = audit

    def identify(self, path: str | Path) -> Identification:
        """Find the patch event of a folder: metadata first, tensor content hash as fallback.

        Raises:
            EventNotFoundError: no patch event produced these tensors.
        """
        uid = read_patch_metadata(path).get("safegene.event")
        rec, method = None, "metadata"
        if uid:
            try:
                rec = self.audit.show_uid(uid)
            except EventNotFoundError:
                rec = None
        if rec is None:
            method = "content-hash"
            rec = self.audit.latest_patch_of(Checkpoint(path).content_hash())
        if rec is None:
            raise EventNotFoundError(str(path), "no patch event produced these tensors")
        return _identification(rec, method)

    def identify_hash(self, content_hash: str) -> Identification:
        """The latest patch event whose output has this tensor content hash (see ``model add``).

        Raises:
            EventNotFoundError: no patch event produced a checkpoint with this hash.
        """
        rec = self.audit.latest_patch_of(content_hash.lower())
        if rec is None:
            raise EventNotFoundError(content_hash[:64], "no patch event produced a checkpoint with this tensor hash")
        return _identification(rec, "content-hash")

    def identify_headers(self, headers: list[bytes]) -> Identification:
        """The patch event named in safetensors headers (each: a shard's 8-byte length and JSON header).

        Raises:
            InvalidCheckpointError: a header is malformed.
            EventNotFoundError: no header names a recorded patch event.
        """
        for raw in headers:
            uid = patch_metadata_from_header(raw).get("safegene.event")
            if uid:
                try:
                    return _identification(self.audit.show_uid(uid), "metadata")
                except EventNotFoundError:
                    continue
        raise EventNotFoundError("uploaded headers", "they name no recorded patch event (stripped metadata? "
                                                     "identify by tensor hash instead)")  # fmt: skip

    def verify(self, *, deep: bool = True, verify_key: str | Path | None = None) -> VerifyReport:
        """Re-hash every blob, check catalog ↔ store both ways, walk the audit chain.

        Args:
            deep: re-hash blob contents (else check presence only).
            verify_key: PEM Ed25519 public key that must have signed every event.

        Returns:
            The problems found, and what `gc` would remove (not problems).
        """
        problems: list[str] = []
        rows = self.catalog.read(lambda s: {b.sha256: b.raw_size for b in s.scalars(select(m.Blob))})
        layer_blobs = self.referenced_blobs()
        on_disk = set(self.store.iter_shas())
        for sha in sorted(set(rows) | layer_blobs):
            if sha not in on_disk:
                problems.append(f"blob {sha[:12]}: in the catalog, missing from the store")
            elif deep:
                try:
                    self.store.check(sha, max_size=rows.get(sha))  # its raw size caps the decoding
                except IntegrityCheckError as exc:
                    problems.append(str(exc))
        for sha in sorted(layer_blobs - set(rows)):
            problems.append(f"blob {sha[:12]}: used by a vector but has no catalog row")
        removable = [f"unreferenced blob {sha[:12]}" for sha in sorted(on_disk - layer_blobs)]
        removable += [f"temp file {t.name}" for t in self.store.stale_temps(older_than_s=0)]
        chain = self.audit.verify(verify_key=verify_key)
        problems += chain.problems
        problems += self.audit.check_vector_states()
        problems += self.audit.check_recalibrations()
        return VerifyReport(not problems, problems, len(on_disk), chain.length, removable)

    def gc(self, *, dry_run: bool = False, temp_age_s: float = 3600.0) -> GcReport:
        """Remove blobs no vector layer references (file and catalog row), and temp files no live writer owns.

        Blobs younger than ``temp_age_s`` are kept, and deletion waits for any
        writer between its first blob and its catalog commit (see the module docstring).

        Args:
            dry_run: only say what would be removed (takes no lock).
            temp_age_s: the grace period in seconds.
        """
        if dry_run:
            doomed, _, freed = self._unreferenced(time.time() - temp_age_s)
            temps = self.store.stale_temps(older_than_s=temp_age_s)
        else:
            # Temp leftovers go under the same lock: on an object store an unfinished
            # upload is only known stale once no writer can be mid-way through it.
            with self.store.collecting():
                doomed, with_rows, freed = self._unreferenced(time.time() - temp_age_s)
                if with_rows:
                    # Rows go before blobs: a crash in between leaves unreferenced blobs
                    # (removable), never a row without its blob.
                    doomed = self.catalog.transaction(lambda s: _drop_rows(s, doomed))
                for sha in doomed:
                    crashpoint("gc.delete-blob")
                    self.store.delete(sha)
                temps = self.store.stale_temps(older_than_s=temp_age_s)
                for t in temps:
                    crashpoint("gc.delete-temp")
                    _remove_temp(t)
        freed += sum(t.size for t in temps)
        return GcReport(doomed, [t.name for t in temps], freed)

    def referenced_blobs(self) -> set[str]:
        """Every blob a vector layer references."""
        return self.catalog.read(lambda s: set(s.scalars(select(m.VectorLayer.blob_sha256).distinct())))

    def _unreferenced(self, cutoff: float) -> tuple[list[str], bool, int]:
        """Blobs (files or rows) no layer references whose file is missing or older than ``cutoff``:
        their shas, whether any has a catalog row, and their files' bytes."""
        referenced = self.referenced_blobs()
        rows = self.catalog.read(lambda s: set(s.scalars(select(m.Blob.sha256))))
        doomed, freed = [], 0
        stored = {o.sha256: o for o in self.store.iter_objects()}
        for sha in sorted((set(stored) | rows) - referenced):
            obj = stored.get(sha)
            if obj is None:
                doomed.append(sha)  # a row whose blob is gone
            elif obj.mtime <= cutoff:
                doomed.append(sha)
                freed += obj.size
        return doomed, any(sha in rows for sha in doomed), freed


def _remove_temp(t: StaleTemp) -> None:
    if t.path is not None and t.name.startswith(LEASE_PREFIX):
        reclaim_partial(t.path)  # the partial folder the lease names
    t.remove()


def _identification(rec: AuditRecord, method: str) -> Identification:
    return Identification(rec.uid, rec.seq, rec.vector_hash, rec.target_hash, rec.output_hash, method,
                          rec.payload.get("coefficients", {}))  # fmt: skip


def _drop_rows(session: Session, shas: list[str]) -> list[str]:
    """Delete the catalog rows of the blobs in ``shas`` that no layer references now; those shas."""
    still = sorted(set(shas) - set(session.scalars(select(m.VectorLayer.blob_sha256).distinct())))
    for i in range(0, len(still), _CHUNK):
        session.execute(delete(m.Blob).where(m.Blob.sha256.in_(still[i : i + _CHUNK])))
    return still

"""The vectors service: extract, register, list, load and remove safety vectors.

Example:
    >>> vectors = Vectors(catalog, BlobStore(home / "store"), AuditLog(catalog))  # doctest: +SKIP
    >>> vec = vectors.extract("toy/aligned", "toy/degraded", name="safety")          # doctest: +SKIP
    >>> slices = vectors.load_slices(vec)                                            # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, aliased

from ..audit.chain import vector_state_digest
from ..audit.log import AuditLog
from ..catalog import models as m
from ..catalog.queries import (
    check_name,
    resolve_family,
    resolve_vector,
    search_condition,
)
from ..catalog.records import (
    LAYER_COLUMNS,
    AuditRecord,
    CheckpointRecord,
    LayerRecord,
    ModelName,
    RecalibrationRecord,
    VectorRecord,
)
from ..catalog.service import Catalog, PendingCheckpoint, current_actor
from ..checkpoints.family import family_key, manifest_hash
from ..checkpoints.reader import Checkpoint, ContentHasher
from ..errors import AlreadyExistsError, IncompatibleError, InvalidInputError
from ..store.base import Store
from ..store.codec import Scratch
from .extract import (
    ENCODINGS,
    Progress,
    decode_slice,
    extract_slices,
    name_order,
    plan_slices,
    scope_names,
    vector_hash,
)

if TYPE_CHECKING:
    import torch


class BlobRow(NamedTuple):
    raw_size: int
    stored_sha256: str | None


@dataclass(frozen=True)
class VectorDetails:
    """A vector with what its page shows: its aligned/degraded pair's records, its recalibrations (newest
    first, at most 100) and one page of the patch events naming it (newest first), with their totals."""

    vector: VectorRecord
    aligned: CheckpointRecord | None
    degraded: CheckpointRecord | None
    recalibrations: list[RecalibrationRecord]
    num_recalibrations: int
    patches: list[AuditRecord]
    num_patches: int
    models: dict[str, ModelName]  # the registered checkpoints among the patches' targets and outputs, by hash


class Vectors:
    """Safety vectors: their catalog rows, their blobs in the store, their audit events.

    Args:
        catalog: vector, layer and blob rows (and the source checkpoints' rows).
        store: the slices' blobs.
        audit: records ``vector.register`` and ``vector.remove``.
    """

    def __init__(self, catalog: Catalog, store: Store, audit: AuditLog) -> None:
        self.catalog = catalog
        self.store = store
        self.audit = audit

    # --- writing ----------------------------------------------------------------

    def extract(self, aligned: str | Path, degraded: str | Path, *, name: str, scope: str = "blocks",
                encoding: str = "fp32", progress: Progress | None = None) -> VectorRecord:  # fmt: skip
        """Extract ``v = aligned − degraded`` and register it.

        Args:
            aligned: folder (registered on the way, role aligned) or catalog REF.
            degraded: folder (role degraded) or catalog REF.
            name: catalog name of the vector.
            scope: which tensors the vector carries (see :mod:`registry.method.extract`).
            encoding: ``fp32`` (lossless) or ``bf16`` (half the bytes; error recorded).
            progress: ``(done, total)`` callback over slices.

        Raises:
            IncompatibleError: the two checkpoints are of different families or tensors differ.
            InvalidInputError: NaN/Inf in the difference, bad scope or encoding.
            AlreadyExistsError: the name is taken by another vector.
        """
        check_name(name, "vector name")
        if encoding not in ENCODINGS:
            raise InvalidInputError(f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
        a_rec, a_ck = self._checkpoint_arg(aligned)
        d_rec, d_ck = self._checkpoint_arg(degraded)
        a_key, d_key = family_key(a_ck.config, a_ck.names()), family_key(d_ck.config, d_ck.names())
        if a_key.id != d_key.id:
            diff = [f"{k}: {v} vs {d_key.to_json()[k]}" for k, v in a_key.to_json().items()
                    if d_key.to_json()[k] != v]  # fmt: skip
            raise IncompatibleError("aligned and degraded checkpoints are of different families", diff)
        names = scope_names(a_ck, scope)
        if a_ck.manifest() != d_ck.manifest():
            raise IncompatibleError("aligned and degraded checkpoints carry different tensors")
        self.check_name_free(name)
        slices = plan_slices(names, scope)
        if not slices:
            raise InvalidInputError("no tensors fall in the chosen scope; try --scope all")
        # A folder not yet in the catalog is hashed (its identity) from the same reads
        # that build the vector, when the slices can be read in tensor-name order;
        # otherwise it is hashed on its own after them. Either way it is registered
        # only once the vector's blobs are stored.
        order = name_order(slices)
        hashers = (ContentHasher(a_ck) if a_rec is None and order else None,
                   ContentHasher(d_ck) if d_rec is None and order else None)  # fmt: skip
        try:
            # gc waits from the first blob until the rows that reference them are committed.
            with self.store.writing():
                layers, meta = extract_slices(self.store, a_ck, d_ck, slices, encoding, progress,
                                              order=order or list(range(len(slices))), hashers=hashers)  # fmt: skip
                a_rec = a_rec or self._register_source(a_ck, "aligned", hashers[0])
                d_rec = d_rec or self._register_source(d_ck, "degraded", hashers[1])
                meta.update(scope=scope, source_dtype=a_ck.dtype_summary(), num_blocks=a_key.num_layers,
                            source_manifest=manifest_hash(a_ck.manifest()))
                return self.register(name, a_key.id, a_rec, d_rec, encoding, scope, layers, meta)
        finally:
            for h in hashers:
                if h is not None:
                    h.close()

    def _checkpoint_arg(self, arg: str | Path) -> tuple[CheckpointRecord | None, Checkpoint]:
        """A catalog REF gives its record; a folder gives None (registered after extraction)."""
        p = Path(arg)
        if p.is_dir():
            return None, Checkpoint(p)
        rec = self.catalog.get_model(str(arg))
        return rec, Checkpoint(rec.path)

    def _register_source(self, ck: Checkpoint, role: str, hasher: ContentHasher | None) -> CheckpointRecord:
        digest = hasher.hexdigest() if hasher is not None else ck.content_hash()
        return self.catalog.add_checkpoint(PendingCheckpoint.of(ck, name=None, role=role, digest=digest))

    def check_name_free(self, name: str) -> None:
        """Raise :class:`AlreadyExistsError` when a vector is named ``name``."""
        taken = self.catalog.read(lambda s: s.scalar(select(m.Vector.hash).where(m.Vector.name == name)))
        if taken:
            raise AlreadyExistsError(
                f"a vector named {name!r} already exists (hash {taken[:12]}); choose another --name "
                "or remove it with `safegene vector rm`"
            )

    def register(self, name: str, family_id: str, aligned: CheckpointRecord | None, degraded: CheckpointRecord | None,
                 encoding: str, scope: str, layers: list[dict[str, Any]], meta: dict[str, Any], *,
                 prepare: Callable[[Session], None] | None = None,
                 event_extra: dict[str, Any] | None = None) -> VectorRecord:  # fmt: skip
        """Record a vector whose blobs are in the store: its row, layers, blob rows and ``vector.register`` event.

        Call it under :meth:`Store.writing` held since the blobs were written or found.

        Args:
            name: catalog name.
            family_id: the family's id (its row exists, or ``prepare`` creates it).
            aligned, degraded: the source checkpoints' records, when known.
            encoding, scope: as extracted.
            layers: one dict per slice: position, index, label, names, blob (a
                :class:`BlobInfo`), norm; optionally score, safety_gain, task_cost,
                selected, probe_set (an imported vector's).
            meta: the vector's meta (shapes, scope, provenance...).
            prepare: runs first inside the transaction (e.g. an import creating its family row).
            event_extra: merged into the audit event's payload.

        Returns:
            The vector (the existing one when this very vector is registered under ``name``).

        Raises:
            AlreadyExistsError: the vector is registered under another name.
        """
        digest = vector_hash([(lay["label"], lay["blob"].sha256) for lay in layers])

        def tx(session: Session) -> VectorRecord:
            existing = session.scalar(select(m.Vector).where(m.Vector.hash == digest))
            if existing is not None:
                if existing.name != name:
                    raise AlreadyExistsError(
                        f"this vector is already registered as {existing.name!r} (hash {digest[:12]})"
                    )
                return VectorRecord.from_row(existing)
            if prepare is not None:
                prepare(session)
            _add_blob_rows(session, layers)
            a_row = session.scalar(select(m.Checkpoint).where(m.Checkpoint.hash == aligned.hash)) if aligned else None
            d_row = session.scalar(select(m.Checkpoint).where(m.Checkpoint.hash == degraded.hash)) if degraded else None
            row = m.Vector(
                name=name, hash=digest, family_id=family_id,
                aligned_id=a_row.id if a_row else None, degraded_id=d_row.id if d_row else None,
                encoding=encoding, tensor_scope=scope, num_layers=len(layers),
                raw_size=sum(lay["blob"].raw_size for lay in layers),
                stored_size=sum(lay["blob"].stored_size for lay in layers),
                meta_json=json.dumps(meta, sort_keys=True), created_by=current_actor(),
            )  # fmt: skip
            row.layers = [_layer_row(lay) for lay in layers]
            session.add(row)
            session.flush()
            self.audit.append(session, "vector.register",
                              {"name": name, "family": family_id, "aligned": aligned.hash if aligned else None,
                               "degraded": degraded.hash if degraded else None, "encoding": encoding,
                               "scope": scope, **(event_extra or {}), "state_digest": vector_state_digest(row)},
                              vector_hash=digest)  # fmt: skip
            return VectorRecord.from_row(row)

        return self.catalog.transaction(tx)

    def remove(self, ref: str) -> VectorRecord:
        """Remove a vector from the catalog (its blobs stay until `gc`)."""

        def tx(session: Session) -> VectorRecord:
            row = resolve_vector(session, ref)
            rec = VectorRecord.from_row(row)
            session.execute(delete(m.Recalibration).where(m.Recalibration.vector_id == row.id))
            session.delete(row)
            self.audit.append(session, "vector.remove", {"name": rec.name}, vector_hash=rec.hash)
            return rec

        return self.catalog.transaction(tx)

    # --- reading ----------------------------------------------------------------

    def get(self, ref: str) -> VectorRecord:
        """A vector by name or hash prefix.

        Raises:
            VectorNotFoundError: no such vector.
            AmbiguousReferenceError: the prefix names several.
        """
        return self.catalog.read(lambda s: VectorRecord.from_row(resolve_vector(s, ref, whole=True)))

    def details(self, ref: str, *, offset: int = 0, limit: int = 50) -> VectorDetails:
        """A vector, its pair, its recalibrations and patch events ``offset`` … ``offset + limit - 1``.

        One query finds the vector with its layers, its pair and both counts; the recalibrations and
        the patch events are read only where there are some.

        Raises:
            VectorNotFoundError: no such vector.
            AmbiguousReferenceError: the prefix names several.
        """

        def q(session: Session) -> tuple[VectorRecord, dict[str, CheckpointRecord], int, int]:
            row = resolve_vector(session, ref, whole=True, counted=True)
            pair = {c.hash: Catalog.checkpoint_record(session, c) for c in (row.aligned, row.degraded) if c is not None}
            return VectorRecord.from_row(row), pair, row.num_recalibrations or 0, row.num_patches or 0

        vec, pair, n_recal, n_patch = self.catalog.read(q)
        recals = self.catalog.recalibrations_of(vec.hash) if n_recal else []
        patches, models = self.audit.patches(vec.hash, offset=offset, limit=limit) if n_patch > offset else ([], {})
        return VectorDetails(vec, pair.get(vec.aligned or ""), pair.get(vec.degraded or ""), recals, n_recal,
                             patches, n_patch, models)  # fmt: skip

    def list_vectors(self, *, family: str | None = None, limit: int | None = None) -> list[VectorRecord]:
        """Vectors newest first, optionally of one family (REF), at most ``limit``."""

        def q(session: Session) -> list[VectorRecord]:
            where = [m.Vector.family_id == resolve_family(session, family).id] if family else []
            return vector_records(session, where, limit=limit)

        return self.catalog.read(q)

    def page(self, *, family: str | None = None, offset: int = 0, limit: int = 50) -> list[VectorRecord]:
        """One page of vectors, newest first (ties by id: a stable order), optionally of one family (REF).

        Raises:
            FamilyNotFoundError: ``family`` names no family.
        """

        def q(session: Session) -> list[VectorRecord]:
            where = [m.Vector.family_id == resolve_family(session, family).id] if family else []
            return vector_records(session, where, limit=limit, offset=offset)

        return self.catalog.read(q)

    def search(self, text_: str, *, limit: int = 20) -> list[VectorRecord]:
        """Vectors whose name contains ``text_`` (case-insensitive) or whose hash starts with it, newest first."""
        cond = search_condition(text_, [m.Vector.name], m.Vector.hash)
        if cond is None:
            return []
        return self.catalog.read(lambda s: vector_records(s, [cond], limit=limit))

    def count(self) -> int:
        return self.catalog.read(lambda s: s.scalar(select(func.count()).select_from(m.Vector)) or 0)

    def load_slices(self, vec: VectorRecord, *, positions: list[int] | None = None) -> dict[int, dict[str, torch.Tensor]]:
        """Fetch (and verify) the slices at ``positions`` (default: all) as fp32 tensors."""
        layers = [lay for lay in vec.layers if positions is None or lay.position in positions]
        rows = self.blob_rows([lay.blob for lay in layers])
        verified: dict[str, str] = {}
        out = {lay.position: self.load_slice(vec, lay, row=rows.get(lay.blob), verified=verified) for lay in layers}
        self.record_verified_blobs(verified)
        return out

    def load_slice(self, vec: VectorRecord, lay: LayerRecord, *, scratch: Scratch | None = None,
                   row: BlobRow | None = None, verified: dict[str, str] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """One slice's tensors as fp32 (the tensors may view ``scratch``: see :meth:`Store.get`).

        ``row``: the catalog's record of the blob: its raw size caps decoding and
        its file digest spares re-hashing the payload of a file verified before.
        ``verified``: gets blob sha -> file sha256 for a file that just passed the
        full check (for :meth:`record_verified_blobs`).
        """
        learn = functools.partial(verified.__setitem__, lay.blob) if verified is not None else None
        tensors = decode_slice(self.store.get(lay.blob, scratch=scratch, max_size=row.raw_size if row else None,
                                              stored_sha256=row.stored_sha256 if row else None,
                                              on_verified=learn))  # fmt: skip
        if sorted(tensors) != sorted(lay.tensor_names):
            raise InvalidInputError(f"slice {lay.label} of {vec.name} holds unexpected tensors")
        import torch

        return {k: t.to(torch.float32) for k, t in tensors.items()}

    def blob_rows(self, shas: list[str]) -> dict[str, BlobRow]:
        """The catalog's record of each blob: (raw size, stored file's sha256 or None)."""
        q = select(m.Blob.sha256, m.Blob.raw_size, m.Blob.stored_sha256).where(m.Blob.sha256.in_(sorted(set(shas))))
        return self.catalog.read(lambda s: {sha: BlobRow(size, stored) for sha, size, stored in s.execute(q).all()})

    def record_verified_blobs(self, verified: dict[str, str]) -> None:
        """Record the sha256 of blob files that just passed the full check: later reads trust them as they are."""
        if not verified:
            return

        def tx(session: Session) -> None:
            for sha, digest in sorted(verified.items()):
                session.execute(update(m.Blob).where(m.Blob.sha256 == sha).values(stored_sha256=digest))

        self.catalog.transaction(tx)


def _add_blob_rows(session: Session, layers: list[dict[str, Any]]) -> None:
    for lay in layers:
        info = lay["blob"]
        blob = session.get(m.Blob, info.sha256)
        if blob is None:
            session.add(m.Blob(sha256=info.sha256, codec=info.codec, raw_size=info.raw_size,
                               stored_size=info.stored_size, stored_sha256=info.stored_sha256))  # fmt: skip
        elif info.stored_sha256 is not None:
            blob.stored_sha256 = info.stored_sha256  # this very file was just verified


def _layer_row(lay: dict[str, Any]) -> m.VectorLayer:
    return m.VectorLayer(position=lay["position"], layer_index=lay["index"], label=lay["label"],
                         tensor_names=json.dumps(lay["names"]), blob_sha256=lay["blob"].sha256, norm=lay["norm"],
                         selected=lay.get("selected", lay["index"] is not None), score=lay.get("score"),
                         safety_gain=lay.get("safety_gain"), task_cost=lay.get("task_cost"),
                         probe_set_hash=lay.get("probe_set"))  # fmt: skip


_AL, _DE = aliased(m.Checkpoint), aliased(m.Checkpoint)
_L = m.VectorLayer
# Built once: making the columns and the aliases' proxies anew cost about as much
# as running the queries (profile of `vector ls --family` over 100 vectors).
_VECTORS = (select(m.Vector.__table__, _AL.hash.label("aligned_hash"), _DE.hash.label("degraded_hash"))
            .outerjoin(_AL, _AL.id == m.Vector.aligned_id).outerjoin(_DE, _DE.id == m.Vector.degraded_id)
            .order_by(m.Vector.created_at.desc(), m.Vector.id.desc()))  # fmt: skip
_LAYERS = select(_L.vector_id, *(getattr(_L, c) for c in LAYER_COLUMNS)).order_by(_L.vector_id, _L.position)


def vector_records(session: Session, where: list[Any], *, limit: int | None = None,
                   offset: int = 0) -> list[VectorRecord]:  # fmt: skip
    """Records for the vectors matching ``where``, newest first, in two lean queries."""
    rows = session.execute(_VECTORS.where(*where).limit(limit).offset(offset or None)).all()
    layers: dict[int, list[LayerRecord]] = {r.id: [] for r in rows}
    ids = list(layers)
    for i in range(0, len(ids), 1000):
        for vid, *values in session.execute(_LAYERS.where(_L.vector_id.in_(ids[i : i + 1000]))):
            layers[vid].append(LayerRecord.from_values(*values))
    return [VectorRecord.build(r, aligned=r.aligned_hash, degraded=r.degraded_hash, layers=layers[r.id])
            for r in rows]  # fmt: skip

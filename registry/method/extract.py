"""Safety vectors: extraction (streaming, one block at a time), storage, listing.

A vector is ``v = θ_aligned − θ_degraded`` computed in fp32, split into one
slice per transformer block; each slice is one safetensors payload stored as
a content-addressed blob, so a patch fetches only the blocks it uses. The
vector's hash is the sha256 of its (label, blob hash) list.

Which tensors a vector carries (``scope``):

* ``blocks`` (default): the 2-D weights inside repeated blocks (attention and
  MLP projections). Norm gains and embeddings drift for reasons unrelated to
  safety and rescaling them is risky, so they are left out by default.
* ``blocks+norms``: every tensor inside repeated blocks.
* ``all``: also embeddings, final norm and ``lm_head`` (as one extra slice).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from .._core import PendingCheckpoint, RegistryCore, current_actor
from .._faults import crashpoint
from .._threads import torch_threads
from ..audit.chain import append_event, vector_state_digest
from ..catalog import models as m
from ..catalog.queries import check_name, resolve_family, resolve_vector
from ..catalog.records import LAYER_COLUMNS, CheckpointRecord, LayerRecord, VectorRecord
from ..checkpoints.family import family_key, layer_of, manifest_hash
from ..checkpoints.reader import (
    Checkpoint,
    ContentHasher,
    tensors_from_buffer,
)
from ..errors import AlreadyExistsError, IncompatibleError, InvalidInputError
from ..store.codec import Scratch

if TYPE_CHECKING:
    import torch

SCOPES = ("blocks", "blocks+norms", "all")
ENCODINGS = ("fp32", "bf16")
EXTRA_LABEL = "extra"
Progress = Callable[[int, int], None]


def plan_slices(names: list[str], scope: str) -> list[tuple[int | None, str, list[str]]]:
    """Group tensor names into slices: (block index or None, label, names)."""
    if scope not in SCOPES:
        raise InvalidInputError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    blocks: dict[int, list[str]] = {}
    extra: list[str] = []
    for name in names:
        hit = layer_of(name)
        if hit is not None:
            blocks.setdefault(hit[0], []).append(name)
        elif scope == "all":
            extra.append(name)
    out: list[tuple[int | None, str, list[str]]] = []
    for idx in sorted(blocks):
        members = sorted(blocks[idx])
        prefix = members[0][: members[0].index(f".{idx}.")]
        out.append((idx, f"{prefix}.{idx}", members))
    if extra:
        out.append((None, EXTRA_LABEL, sorted(extra)))
    return out


def _scope_filter(ckpt: Checkpoint, scope: str) -> list[str]:
    if scope == "blocks":
        return [n for n in ckpt.names() if layer_of(n) and len(ckpt.tensors[n].shape) >= 2]
    return ckpt.names()


class BlobRow(NamedTuple):
    raw_size: int
    stored_sha256: str | None


def _name_order(slices: list[tuple[int | None, str, list[str]]]) -> list[int] | None:
    """Slice positions in the order that reads tensors in name order, or None when their names interleave."""
    order = sorted(range(len(slices)), key=lambda i: slices[i][2][0])
    for prev, nxt in itertools.pairwise(order):
        if slices[prev][2][-1] >= slices[nxt][2][0]:
            return None
    return order


def vector_hash(slices: list[tuple[str, str]]) -> str:
    canon = json.dumps(slices, separators=(",", ":"))
    return hashlib.sha256(b"safegene-vector-v1\n" + canon.encode()).hexdigest()


def payload_skip(payload: bytes | memoryview) -> int:
    return 8 + int.from_bytes(payload[:8], "little")


def decode_slice(payload: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """A slice payload's tensors (validated header; a writable payload is shared, not copied)."""
    return tensors_from_buffer(payload, "vector slice")


class VectorOps(RegistryCore):
    """Vector operations of :class:`registry.Registry` (a mixin)."""

    def extract_vector(
        self,
        aligned: str | Path,
        degraded: str | Path,
        *,
        name: str,
        scope: str = "blocks",
        encoding: str = "fp32",
        progress: Progress | None = None,
    ) -> VectorRecord:
        """Extract ``v = aligned − degraded`` and register it.

        Args:
            aligned: folder (registered on the way, role aligned) or catalog REF.
            degraded: folder (role degraded) or catalog REF.
            name: catalog name of the vector.
            scope: which tensors the vector carries (see module docstring).
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
        names = _scope_filter(a_ck, scope)
        if a_ck.manifest() != d_ck.manifest():
            raise IncompatibleError("aligned and degraded checkpoints carry different tensors")
        self._check_vector_name_free(name)
        slices = plan_slices(names, scope)
        if not slices:
            raise InvalidInputError("no tensors fall in the chosen scope; try --scope all")
        # A folder not yet in the catalog is hashed (its identity) from the same reads
        # that build the vector, when the slices can be read in tensor-name order;
        # otherwise it is hashed on its own after them. Either way it is registered
        # only once the vector's blobs are stored.
        order = _name_order(slices)
        hashers = (ContentHasher(a_ck) if a_rec is None and order else None,
                   ContentHasher(d_ck) if d_rec is None and order else None)  # fmt: skip
        try:
            layers, meta = self._extract_slices(a_ck, d_ck, slices, encoding, progress,
                                                order=order or list(range(len(slices))), hashers=hashers)  # fmt: skip
            a_rec = a_rec or self._register_source(a_ck, "aligned", hashers[0])
            d_rec = d_rec or self._register_source(d_ck, "degraded", hashers[1])
        finally:
            for h in hashers:
                if h is not None:
                    h.close()
        meta.update(scope=scope, source_dtype=a_ck.dtype_summary(), num_blocks=a_key.num_layers,
                    source_manifest=manifest_hash(a_ck.manifest()))
        return self._register_vector(name, a_key.id, a_rec, d_rec, encoding, scope, layers, meta)

    def _checkpoint_arg(self, arg: str | Path) -> tuple[CheckpointRecord | None, Checkpoint]:
        """A catalog REF gives its record; a folder gives None (registered after extraction)."""
        p = Path(arg)
        if p.is_dir():
            return None, Checkpoint(p)
        rec = self.get_model(str(arg))
        return rec, Checkpoint(rec.path)

    def _register_source(self, ck: Checkpoint, role: str, hasher: ContentHasher | None) -> CheckpointRecord:
        digest = hasher.hexdigest() if hasher is not None else ck.content_hash()
        pending = PendingCheckpoint.of(ck, name=None, role=role, digest=digest)
        return self.transaction(lambda s: self._insert_checkpoint(s, pending))

    def _check_vector_name_free(self, name: str) -> None:
        taken = self.read(lambda s: s.scalar(select(m.Vector.hash).where(m.Vector.name == name)))
        if taken:
            raise AlreadyExistsError(
                f"a vector named {name!r} already exists (hash {taken[:12]}); choose another --name "
                "or remove it with `safegene vector rm`"
            )

    def _extract_slices(self, a_ck: Checkpoint, d_ck: Checkpoint, slices: list[tuple[int | None, str, list[str]]],
                        encoding: str, progress: Progress | None, *, order: list[int],
                        hashers: tuple[ContentHasher | None, ContentHasher | None]
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
        # Three stages: this thread computes a slice's differences (and feeds the
        # checkpoints' content hashes), encoders hash and compress slices
        # (store.encode; hashlib, numpy and zstd release the GIL), and a writer writes
        # and fsyncs them in slice order (I/O wait overlaps the work). Two payload
        # buffers alternate: a slice is built once the slice two before it is encoded.
        # Two encoders, so that a slice's encoding starts as soon as it is built,
        # while the previous one's last plane is still being compressed (one encoder
        # left a core idle at the end of every slice). The crashpoint fires as each
        # write is collected. Nothing is in the catalog until every blob is on disk.
        from ._slice_builder import SliceBuilder  # imports torch

        layers: list[dict[str, Any]] = []
        shapes: dict[str, list[int]] = {}
        builder = SliceBuilder(a_ck, d_ck, encoding, hashers)
        width = 2 if encoding == "bf16" else 4
        Pending = tuple[int, int | None, str, list[str], float, Future[Any]]

        def written(pending: Pending) -> None:
            pos, idx, label, members, norm, fut = pending
            layers.append({"position": pos, "index": idx, "label": label, "names": members,
                           "blob": fut.result(), "norm": norm})  # fmt: skip
            crashpoint("extract.slice-stored")
            if progress:
                progress(len(layers), len(slices))

        def write(encoded: Future[Any]) -> Any:
            return self.store.write(encoded.result())

        # Intra-op threads only cost here: the chunks are cache-sized, and on a busy
        # machine torch's thread hand-offs made the arithmetic 10-25x slower (measured).
        with (
            torch_threads(1),
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="safegene-encode") as encoder,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="safegene-write") as writer,
        ):
            encodes: list[Future[Any]] = []  # in flight, oldest first: one per payload buffer
            writes: list[Pending] = []
            ha, hd = hashers
            if ha is not None and hd is not None:
                # The tensors named before the first slice's (embeddings, lm_head) are
                # hashed first; both checkpoints' at once, while the encoders are idle.
                first = min(slices[order[0]][2])
                ahead = encoder.submit(hd.hash_before, first)
                ha.hash_before(first)
                ahead.result()
            for pos in order:
                idx, label, members = slices[pos]
                if len(encodes) == 2:
                    encodes.pop(0).result()  # the buffer build() is about to reuse
                payload, norm = builder.build(members)
                shapes.update({n: list(a_ck.tensors[n].shape) for n in members})
                encodes.append(encoder.submit(self.store.encode, payload, skip=payload_skip(payload), width=width))
                writes.append((pos, idx, label, members, norm, writer.submit(write, encodes[-1])))
                while len(writes) > 2 or (writes and writes[0][-1].done()):
                    written(writes.pop(0))
                del payload
            for pending in writes:
                written(pending)
        layers.sort(key=lambda lay: lay["position"])
        return layers, {"shapes": shapes, "max_abs_error": builder.max_err}

    def _register_vector(self, name: str, family_id: str, a_rec: CheckpointRecord | None, d_rec: CheckpointRecord | None,
                         encoding: str, scope: str, layers: list[dict[str, Any]], meta: dict[str, Any], *,
                         prepare: Callable[[Session], None] | None = None,
                         event_extra: dict[str, Any] | None = None) -> VectorRecord:  # fmt: skip
        # prepare: runs first inside the transaction (e.g. an import creating its family row);
        # layer dicts may carry score/safety_gain/task_cost/selected/probe_set (bundle import);
        # event_extra is merged into the vector.register audit payload.
        digest = vector_hash([[lay["label"], lay["blob"].sha256] for lay in layers])
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
            for lay in layers:
                info = lay["blob"]
                blob = session.get(m.Blob, info.sha256)
                if blob is None:
                    session.add(m.Blob(sha256=info.sha256, codec=info.codec, raw_size=info.raw_size,
                                       stored_size=info.stored_size, stored_sha256=info.stored_sha256))  # fmt: skip
                elif info.stored_sha256 is not None:
                    blob.stored_sha256 = info.stored_sha256  # this very file was just verified
            a_row = session.scalar(select(m.Checkpoint).where(m.Checkpoint.hash == a_rec.hash)) if a_rec else None
            d_row = session.scalar(select(m.Checkpoint).where(m.Checkpoint.hash == d_rec.hash)) if d_rec else None
            row = m.Vector(
                name=name, hash=digest, family_id=family_id,
                aligned_id=a_row.id if a_row else None, degraded_id=d_row.id if d_row else None,
                encoding=encoding, tensor_scope=scope, num_layers=len(layers),
                raw_size=sum(lay["blob"].raw_size for lay in layers),
                stored_size=sum(lay["blob"].stored_size for lay in layers),
                meta_json=json.dumps(meta, sort_keys=True), created_by=current_actor(),
            )  # fmt: skip
            row.layers = [
                m.VectorLayer(position=lay["position"], layer_index=lay["index"], label=lay["label"],
                              tensor_names=json.dumps(lay["names"]), blob_sha256=lay["blob"].sha256,
                              norm=lay["norm"], selected=lay.get("selected", lay["index"] is not None),
                              score=lay.get("score"), safety_gain=lay.get("safety_gain"),
                              task_cost=lay.get("task_cost"), probe_set_hash=lay.get("probe_set"))
                for lay in layers
            ]  # fmt: skip
            session.add(row)
            session.flush()
            append_event(session, "vector.register",
                         {"name": name, "family": family_id, "aligned": a_rec.hash if a_rec else None,
                          "degraded": d_rec.hash if d_rec else None, "encoding": encoding, "scope": scope,
                          **(event_extra or {}), "state_digest": vector_state_digest(row)},
                         actor=current_actor(), sign_key=self.sign_key, vector_hash=digest)  # fmt: skip
            return VectorRecord.from_row(row)

        return self.transaction(tx)

    # --- reading --------------------------------------------------------------

    def get_vector(self, ref: str) -> VectorRecord:
        return self.read(lambda s: VectorRecord.from_row(resolve_vector(s, ref)))

    def list_vectors(self, *, family: str | None = None, limit: int | None = None) -> list[VectorRecord]:
        def q(session: Session) -> list[VectorRecord]:
            where = [m.Vector.family_id == resolve_family(session, family).id] if family else []
            return vector_records(session, where, limit=limit)

        return self.read(q)

    def load_vector_slices(self, vec: VectorRecord, *, positions: list[int] | None = None) -> dict[int, dict[str, torch.Tensor]]:
        """Fetch (and verify) the slices at ``positions`` (default: all) as fp32 tensors."""
        layers = [lay for lay in vec.layers if positions is None or lay.position in positions]
        rows = self.blob_rows([lay.blob for lay in layers])
        verified: dict[str, str] = {}
        out = {lay.position: self.load_slice(vec, lay, row=rows.get(lay.blob), verified=verified) for lay in layers}
        self.record_verified_blobs(verified)
        return out

    def record_verified_blobs(self, verified: dict[str, str]) -> None:
        """Record the sha256 of blob files that just passed the full check: later reads trust them as they are."""
        if not verified:
            return

        def tx(session: Session) -> None:
            for sha, digest in sorted(verified.items()):
                session.execute(update(m.Blob).where(m.Blob.sha256 == sha).values(stored_sha256=digest))

        self.transaction(tx)

    def blob_rows(self, shas: list[str]) -> dict[str, BlobRow]:
        """The catalog's record of each blob: (raw size, stored file's sha256 or None)."""
        q = select(m.Blob.sha256, m.Blob.raw_size, m.Blob.stored_sha256).where(m.Blob.sha256.in_(sorted(set(shas))))
        return self.read(lambda s: {sha: BlobRow(size, stored) for sha, size, stored in s.execute(q).all()})

    def load_slice(self, vec: VectorRecord, lay: LayerRecord, *, scratch: Scratch | None = None,
                   row: BlobRow | None = None, verified: dict[str, str] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """One slice's tensors as fp32 (the tensors may view ``scratch``: see :meth:`BlobStore.get`).

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

    def remove_vector(self, ref: str) -> VectorRecord:
        """Remove a vector from the catalog (its blobs stay until `gc`)."""
        def tx(session: Session) -> VectorRecord:
            row = resolve_vector(session, ref)
            rec = VectorRecord.from_row(row)
            session.execute(m.Recalibration.__table__.delete().where(m.Recalibration.vector_id == row.id))
            session.delete(row)
            append_event(session, "vector.remove", {"name": rec.name}, actor=current_actor(), sign_key=self.sign_key, vector_hash=rec.hash)
            return rec

        return self.transaction(tx)

    def count_vectors(self) -> int:
        return self.read(lambda s: s.scalar(select(func.count()).select_from(m.Vector)) or 0)


_AL, _DE = aliased(m.Checkpoint), aliased(m.Checkpoint)
_L = m.VectorLayer
# Built once: making the columns and the aliases' proxies anew cost about as much
# as running the queries (profile of `vector ls --family` over 100 vectors).
_VECTORS = (select(m.Vector.__table__, _AL.hash.label("aligned_hash"), _DE.hash.label("degraded_hash"))
            .outerjoin(_AL, _AL.id == m.Vector.aligned_id).outerjoin(_DE, _DE.id == m.Vector.degraded_id)
            .order_by(m.Vector.created_at.desc(), m.Vector.id.desc()))  # fmt: skip
_LAYERS = select(_L.vector_id, *(getattr(_L, c) for c in LAYER_COLUMNS)).order_by(_L.vector_id, _L.position)


def vector_records(session: Session, where: list[Any], *, limit: int | None = None) -> list[VectorRecord]:
    """Records for the vectors matching ``where``, newest first, in two lean queries."""
    rows = session.execute(_VECTORS.where(*where).limit(limit)).all()
    layers: dict[int, list[LayerRecord]] = {r.id: [] for r in rows}
    ids = list(layers)
    for i in range(0, len(ids), 1000):
        for vid, *values in session.execute(_LAYERS.where(_L.vector_id.in_(ids[i : i + 1000]))):
            layers[vid].append(LayerRecord.from_values(*values))
    return [VectorRecord.build(r, aligned=r.aligned_hash, degraded=r.degraded_hash, layers=layers[r.id])
            for r in rows]  # fmt: skip

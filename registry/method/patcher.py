"""Patching a target with a vector: the ``Patcher`` service behind ``safegene patch``.

The flow: check the vector fits, resolve the coefficients (recalibrating when
asked), then stream ``θ_T + Σ λ_l v_l`` into a new folder while three things run
beside the writer: the next slices decode into reused buffers, and the
target's content hash is computed. The output, the target's row and the audit
event are recorded in one transaction just before the folder takes its name.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from ..audit.chain import canonical_json, new_uid
from ..audit.log import AuditLog
from ..catalog.records import VectorRecord
from ..catalog.service import Catalog, PendingCheckpoint
from ..checkpoints.provenance import read_patch_metadata
from ..checkpoints.reader import Checkpoint, ContentHasher
from ..errors import AlreadyExistsError, IntegrityCheckError, RegistryError
from ..evaluation.probes import Probe
from ..store.codec import Scratch
from .fit_settings import FitSettings
from .patching import write_order, write_patched
from .pipeline import Progress, Recalibrator, auto_shots, layer_key, select_positions
from .vectors import Vectors

if TYPE_CHECKING:
    import torch


class _SliceFeed:
    """A patch's decoded vector slices: one held, the next decoded ahead in ``pool`` (two at first).

    ``pool`` has one worker: every slice decodes there, one at a time.

    ``names``: the order the patch asks for tensors in (a block's tensors come
    together), which gives the order the slices are needed in. The first one
    starts decoding at once.
    """

    def __init__(self, vectors: Vectors, vec: VectorRecord, positions: list[int], names: list[str],
                 pool: ThreadPoolExecutor) -> None:  # fmt: skip
        self.vectors, self.vec, self.pool = vectors, vec, pool
        self.layer = {lay.position: lay for lay in vec.layers}
        self.rows = vectors.blob_rows([lay.blob for lay in vec.layers if lay.position in positions])
        self.verified: dict[str, str] = {}  # blob files that passed the full check here (recorded at the end)
        # Two decode scratches alternate (the held slice's and the one ahead): reused,
        # they spare fresh allocations' page faults for every slice. Slices decode one
        # at a time (one worker), so the buffers needed only while decoding are shared.
        transient = Scratch()
        self.scratch = {0: Scratch(transient_from=transient), 1: Scratch(transient_from=transient)}
        self.pos_of = {n: lay.position for lay in vec.layers if lay.position in positions for n in lay.tensor_names}
        seq = list(dict.fromkeys(self.pos_of[n] for n in names if n in self.pos_of))
        self.after = dict(itertools.pairwise(seq))
        self.held: dict[int, dict[str, torch.Tensor]] = {}
        self.ahead: dict[int, Future[dict[str, torch.Tensor]]] = {}
        self.slot = {p: i % 2 for i, p in enumerate(seq)}
        for q in seq[:2]:  # nothing is held yet: both buffers can fill while the target is hashed
            self.ahead[q] = pool.submit(self._load, q)

    def _load(self, p: int) -> dict[str, torch.Tensor]:
        lay = self.layer[p]
        # The catalog's row: a blob whose header claims more than its raw size is
        # refused before any allocation; its stored digest spares the payload hash.
        row = self.rows.get(lay.blob)
        if row is None:
            raise IntegrityCheckError(f"blob {lay.blob[:12]} of {self.vec.name} has no catalog row; run `safegene verify`")
        return self.vectors.load_slice(self.vec, lay, scratch=self.scratch[self.slot[p]], row=row, verified=self.verified)

    def settled_verified(self) -> dict[str, str]:
        """:attr:`verified`, once no decode is running any more."""
        wait(list(self.ahead.values()))
        return dict(self.verified)

    def lookup(self, lam: dict[int, float]) -> Callable[[str], tuple[float, torch.Tensor] | None]:
        """name -> (λ, v) for patched tensors, None for the others."""

        def get(name: str) -> tuple[float, torch.Tensor] | None:
            p = self.pos_of.get(name)
            if p is None:
                return None
            if p not in self.held:
                self.held.clear()
                fut = self.ahead.pop(p, None)
                nxt = self.after.get(p)
                # Anything decoding ahead but the next slice (p came out of the expected
                # order) must finish before its buffer can be reused.
                wait([f for q, f in self.ahead.items() if q != nxt and not f.cancel()])
                self.ahead = {q: f for q, f in self.ahead.items() if q == nxt}
                self.held[p] = (fut if fut is not None else self.pool.submit(self._load, p)).result()
                if nxt is not None and nxt not in self.ahead:
                    self.ahead[nxt] = self.pool.submit(self._load, nxt)
            return lam[p], self.held[p][name]

        return get


@dataclass(frozen=True)
class PatchResult:
    event: str
    event_seq: int
    output: str
    hash: str
    vector: str
    vector_name: str
    target: str
    coefficients: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Patcher:
    """Writes patched models (see the module docstring) and records them.

    Args:
        catalog: records the target and the output checkpoints.
        vectors: the vector's slices (its store's ``tmp/`` holds the output's lease).
        recalibrator: the fit check and the coefficients (``auto`` recalibrates).
        audit: records the ``patch`` event, and finds an earlier run's.
    """

    def __init__(self, catalog: Catalog, vectors: Vectors, recalibrator: Recalibrator, audit: AuditLog) -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.recalibrator = recalibrator
        self.audit = audit

    def patch(self, target: str | Path, vector: str, out: str | Path, *, coefficients: str = "auto",
              layers: str | Sequence[int] = "auto", shots: str | Path | Sequence[Probe] | None = None,
              settings: FitSettings | None = None, force: bool = False, device: str = "cpu",
              progress: Progress | None = None) -> PatchResult:  # fmt: skip
        """Write ``θ_T + Σ λ_l v_l`` as a new folder, register it and append the audit event.

        Raises:
            IncompatibleError: the vector does not fit the target.
            AlreadyExistsError: ``out`` exists and ``force`` is false.
            InvalidInputError: no layers selected, bad coefficients or shots.
        """
        vec = self.vectors.get(vector)
        ck = Checkpoint(target)
        self.recalibrator.fit_check(vec, ck)
        out_path = Path(out)
        positions = select_positions(vec, layers)
        stop = threading.Event()
        with (
            ThreadPoolExecutor(1, thread_name_prefix="safegene-slice") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="safegene-hash") as hasher,
        ):
            # The target's content hash is computed beside everything else: the first
            # slices decode meanwhile, and the shards are written with a placeholder
            # for it (filled in before the rename), so no core waits for it.
            hashing = hasher.submit(ContentHasher(ck).hexdigest, stop)
            try:
                feed = _SliceFeed(self.vectors, vec, positions, write_order(ck), pool)
                return self._patch(vec, ck, out_path, feed, positions, hashing, coefficients=coefficients,
                                   shots=shots, settings=settings, force=force, device=device,
                                   progress=progress)  # fmt: skip
            finally:
                stop.set()  # a failed patch does not wait for the rest of the target's hash
                pool.shutdown(cancel_futures=True)  # nor for slices queued ahead

    def _patch(self, vec: VectorRecord, ck: Checkpoint, out_path: Path, feed: _SliceFeed, positions: list[int],
               hashing: Future[str], *, coefficients: str, shots: str | Path | Sequence[Probe] | None,
               settings: FitSettings | None, force: bool, device: str, progress: Progress | None) -> PatchResult:  # fmt: skip
        target = ck.path
        if coefficients == "auto":
            auto_shots(shots)  # said before waiting for the target's hash
        # Needed at once only to recognise an earlier run's output, or to key a recalibration.
        early = hashing.result() if out_path.exists() or coefficients == "auto" else None
        if out_path.exists() and not force and not self._same_patch_meta(out_path, vec, hashing.result()):
            raise AlreadyExistsError(f"{out_path} already exists; choose another --out or pass --force")
        coefs = self.recalibrator.coefficients_for(vec, target, coefficients, positions, shots=shots,
                                                   settings=settings, device=device, progress=None,
                                                   target_hash=early)  # fmt: skip
        if out_path.exists() and not force:
            earlier = self._completed_patch(out_path, vec, hashing.result(), coefs)
            if earlier is None:
                raise AlreadyExistsError(f"{out_path} already exists; choose another --out or pass --force")
            return earlier
        key_of = {lay.position: layer_key(lay.index) for lay in vec.layers}
        uid = new_uid()
        meta = {"safegene.vector": vec.hash, "safegene.vector_name": vec.name, "safegene.event": uid,
                "safegene.target": early or "0" * 64, "safegene.coefficients": canonical_json(coefs)}  # fmt: skip
        payload = {"vector": vec.name, "coefficients": coefs, "target_path": str(ck.path),
                   "output_path": str(out_path.resolve()), "coefficient_spec": coefficients,
                   "layers": [key_of[p] for p in positions]}  # fmt: skip
        done: list[PatchResult] = []

        def fill() -> dict[str, str]:
            return {"safegene.target": hashing.result()}

        def register(staged: Path, digest: str | None) -> None:
            # Catalog row and audit event commit before the folder takes its final
            # name: a crash in between leaves a record and a reclaimable temp
            # folder, never an unrecorded patched model. The digest comes from
            # the bytes as they were written (None: read the folder back).
            pending = PendingCheckpoint.of(Checkpoint(staged), name=None, role="patched", digest=digest)
            pending_target = PendingCheckpoint.of(ck, name=None, role="task", digest=hashing.result())

            def tx(session: Session) -> PatchResult:
                target_rec = self.catalog.insert_checkpoint(session, pending_target)
                out_rec = self.catalog.insert_checkpoint(session, pending, parent=target_rec.hash,
                                                         record_path=out_path.resolve())  # fmt: skip
                ev = self.audit.append(session, "patch", payload, uid=uid, vector_hash=vec.hash,
                                       target_hash=target_rec.hash, output_hash=out_rec.hash)  # fmt: skip
                return PatchResult(uid, ev.seq, str(out_path.resolve()), out_rec.hash, vec.hash, vec.name,
                                   target_rec.hash, coefs)  # fmt: skip

            done.append(self.catalog.transaction(tx))

        write_patched(ck, feed.lookup({p: coefs[key_of[p]] for p in positions}), out_path, metadata=meta,
                      force=force, lease_dir=self.vectors.store.tmp_dir, before_rename=register, progress=progress,
                      fill=None if early else fill)  # fmt: skip
        self.vectors.record_verified_blobs(feed.settled_verified())  # later patches read those files without re-hashing
        return done[0]

    @staticmethod
    def _same_patch_meta(out: Path, vec: VectorRecord, target_hash: str) -> bool:
        try:
            meta = read_patch_metadata(out)
        except RegistryError:
            return False
        return meta.get("safegene.vector") == vec.hash and meta.get("safegene.target") == target_hash

    def _completed_patch(self, out: Path, vec: VectorRecord, target_hash: str,
                         coefs: dict[str, float]) -> PatchResult | None:  # fmt: skip
        """The earlier run's result when ``out`` is exactly this patch, already recorded."""
        meta = read_patch_metadata(out)
        if json.loads(meta.get("safegene.coefficients", "null")) != coefs:
            return None
        try:
            ev = self.audit.show_uid(meta["safegene.event"])
        except RegistryError:
            return None
        if ev.kind != "patch" or ev.vector_hash != vec.hash or ev.target_hash != target_hash or not ev.output_hash:
            return None
        return PatchResult(ev.uid, ev.seq, str(out.resolve()), ev.output_hash, vec.hash, vec.name, target_hash, coefs)

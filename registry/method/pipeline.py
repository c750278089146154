"""Layer scoring, recalibration (cached fits) and coefficient resolution: the ``Recalibrator`` service.

The arithmetic (layer scores, the λ fit and its loss) is :mod:`registry.method.recalibrate`,
imported on use: opening a registry never imports torch.

Example:
    >>> rc = Recalibrator(catalog, vectors, audit)                      # doctest: +SKIP
    >>> rc.score("safety", "shots.jsonl")                               # doctest: +SKIP
    >>> rc.recalibrate("models/task", "safety", "shots.jsonl").coefficients  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit.attest import RECALIBRATE_EVENT, attested, coefficients_digest
from ..audit.chain import canonical_json, vector_state_digest
from ..audit.log import AuditLog
from ..catalog import models as m
from ..catalog.queries import resolve_vector
from ..catalog.records import VectorRecord
from ..catalog.service import Catalog
from ..checkpoints.family import compatibility_reasons, family_key
from ..checkpoints.reader import Checkpoint
from ..errors import IncompatibleError, InvalidInputError
from ..evaluation.probes import Probe, load_probes, probes_hash
from .extract import EXTRA_LABEL
from .fit_settings import FitSettings
from .vectors import Vectors

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RecalibrationResult:
    vector: str
    target: str
    shots: str
    coefficients: dict[str, float]  # layer index (or "extra") -> λ
    losses: list[float]
    seconds: float
    cached: bool
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def layer_key(index: int | None) -> str:
    return EXTRA_LABEL if index is None else str(index)


def _as_probes(shots: str | Path | Sequence[Probe]) -> list[Probe]:
    return load_probes(shots) if isinstance(shots, (str, Path)) else list(shots)


def select_positions(vec: VectorRecord, layers: str | Sequence[int]) -> list[int]:
    """Slice positions for ``auto`` (selected), ``all`` (every block) or a list of block indices.

    Raises:
        InvalidInputError: nothing selected, or an index the vector does not carry.
    """
    if layers == "auto":
        pos = [lay.position for lay in vec.layers if lay.selected]
        if not pos:
            raise InvalidInputError(
                f"vector {vec.name} has no layers selected; run `safegene vector score` or pass --layers all"
            )
        return pos
    if layers == "all":
        return [lay.position for lay in vec.layers if lay.index is not None]
    wanted = [int(x) for x in (layers.split(",") if isinstance(layers, str) else layers)]
    by_index = {lay.index: lay.position for lay in vec.layers}
    missing = [w for w in wanted if w not in by_index]
    if missing or not wanted:
        raise InvalidInputError(f"vector {vec.name} has no block(s) {missing or wanted}; it has {sorted(k for k in by_index if k is not None)}")
    return [by_index[w] for w in wanted]


def auto_shots(shots: str | Path | Sequence[Probe] | None) -> str | Path | Sequence[Probe]:
    """The shots ``--coefficients auto`` recalibrates on (it needs some)."""
    if shots is None:
        raise InvalidInputError("--coefficients auto needs --shots FILE (or use uniform[:γ])")
    return shots


def parse_layers(spec: str) -> str | list[int]:
    if spec in ("auto", "all"):
        return spec
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"--layers must be auto, all or a comma list of block indices, got {spec!r}") from None


class Recalibrator:
    """Scores a vector's layers and fits its per-layer coefficients for a target.

    Args:
        catalog: probe sets, cached fits, the vectors' source checkpoints.
        vectors: the vectors and their slices.
        audit: records ``vector.score``.
    """

    def __init__(self, catalog: Catalog, vectors: Vectors, audit: AuditLog) -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.audit = audit

    def fit_check(self, vec: VectorRecord, target: Checkpoint) -> None:
        """Raise :class:`IncompatibleError` (with every reason) unless ``vec`` fits ``target``."""
        key = family_key(target.config, target.names())
        reasons = compatibility_reasons(vec.manifest(), target.manifest(), target_tied=key.tied_embeddings)
        if key.id != vec.family:
            reasons.insert(0, f"target family {key.id[:12]} ({key.model_type}) is not the vector's {vec.family[:12]}")
        if reasons:
            raise IncompatibleError(f"vector {vec.name} does not fit {target.path}", reasons)

    # --- scoring ------------------------------------------------------------------

    def score(self, ref: str, probes: str | Path | Sequence[Probe], *, target: str | Path | None = None,
              beta: float = 1.0, device: str = "cpu", progress: Progress | None = None) -> VectorRecord:  # fmt: skip
        """Data-aware layer scores on ``probes`` (harmful + task/benign), stored per layer.

        The scores are measured on ``target`` (default: the vector's degraded
        checkpoint): adding one block's slice, does refusal CE fall more than
        utility CE rises? Blocks with a positive score are selected.

        Raises:
            IncompatibleError: the vector does not fit the target.
            InvalidInputError: empty/malformed probes; no target and no degraded checkpoint on record.
        """
        items = _as_probes(probes)
        vec = self.vectors.get(ref)
        base_dir = Path(target) if target else self._degraded_path(vec)
        ck = Checkpoint(base_dir)
        self.fit_check(vec, ck)
        # torch and transformers are imported here, on use: not when a catalog is opened
        from ..evaluation.textio import load_model, load_tokenizer
        from .recalibrate import encode_shots, score_layers

        model, tok = load_model(base_dir, device=device), load_tokenizer(base_dir)
        blocks = [lay.position for lay in vec.layers if lay.index is not None]
        slices = self.vectors.load_slices(vec, positions=blocks)
        batches = encode_shots(tok, items, device=device, answer_tokens=FitSettings().answer_tokens)
        scores = score_layers(model, slices, batches, beta=beta, progress=progress)
        by_pos = {s.position: s for s in scores}

        def tx(session: Session) -> VectorRecord:
            row = resolve_vector(session, vec.hash)
            digest = _store_probe_set(session, items)
            for lay in row.layers:
                s = by_pos.get(lay.position)
                if s is None:
                    continue
                lay.safety_gain, lay.task_cost = round(s.safety_gain, 6), round(s.task_cost, 6)
                lay.score = round(s.score, 6)
                lay.selected = s.safety_gain > 0 and s.score > 0
                lay.probe_set_hash = digest
            session.flush()
            self.audit.append(session, "vector.score",
                              {"name": row.name, "probe_set": digest, "state_digest": vector_state_digest(row)},
                              vector_hash=row.hash)  # fmt: skip
            return VectorRecord.from_row(row)

        return self.catalog.transaction(tx)

    def _degraded_path(self, vec: VectorRecord) -> Path:
        if not vec.degraded:
            raise InvalidInputError(f"vector {vec.name} has no degraded checkpoint on record; pass --target DIR")
        return Path(self.catalog.get_model(vec.degraded).path)

    # --- recalibration --------------------------------------------------------------

    def recalibrate(self, target: str | Path, vector: str, shots: str | Path | Sequence[Probe], *,
                    layers: str | Sequence[int] = "auto", settings: FitSettings | None = None,
                    device: str = "cpu", use_cache: bool = True, progress: Progress | None = None,
                    target_hash: str | None = None) -> RecalibrationResult:  # fmt: skip
        """Fit one coefficient per selected block on a few shots (cached in the catalog).

        ``target_hash``: the target's content hash when the caller already has it
        (hashing a large checkpoint is the slowest part of a cache hit).

        Raises:
            IncompatibleError: the vector does not fit the target.
            InvalidInputError: empty/malformed shots, no layers selected.
        """
        s = settings or FitSettings()
        items = _as_probes(shots)
        vec = self.vectors.get(vector)
        ck = Checkpoint(target)
        self.fit_check(vec, ck)
        positions = select_positions(vec, layers)
        target_hash, shots_hash = target_hash or ck.content_hash(), probes_hash(items)
        cfg = {**s.to_json(), "positions": positions}
        settings_hash = hashlib.sha256(canonical_json(cfg).encode()).hexdigest()
        if use_cache:
            hit = self._cached_fit(vec, target_hash, shots_hash, settings_hash)
            if hit is not None:
                return hit
        # torch and transformers are imported here, on use: not when a catalog is opened
        from ..evaluation.textio import load_model, load_tokenizer
        from .recalibrate import encode_shots, fit_coefficients

        model, tok = load_model(ck.path, device=device), load_tokenizer(ck.path)
        slices = self.vectors.load_slices(vec, positions=positions)
        batches = encode_shots(tok, items, batch_size=s.batch_size, device=device, answer_tokens=s.answer_tokens)
        fit = fit_coefficients(model, slices, batches, s, progress=progress)
        index_of = {lay.position: lay.index for lay in vec.layers}
        coefs = {layer_key(index_of[p]): lam for p, lam in fit.coefficients.items()}

        def tx(session: Session) -> RecalibrationResult:
            row = resolve_vector(session, vec.hash)
            _store_probe_set(session, items)
            existing = session.scalar(select(m.Recalibration).where(
                m.Recalibration.vector_id == row.id, m.Recalibration.target_hash == target_hash,
                m.Recalibration.shots_hash == shots_hash, m.Recalibration.settings_hash == settings_hash))  # fmt: skip
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(m.Recalibration(
                vector_id=row.id, target_hash=target_hash, shots_hash=shots_hash,
                settings_hash=settings_hash, settings_json=canonical_json(cfg),
                coefficients_json=canonical_json(coefs),
                losses_json=json.dumps({"curve": fit.losses, "terms": fit.terms}), seconds=fit.seconds))  # fmt: skip
            # The chain covers the cached λ: a later cache hit is checked against this digest.
            self.audit.append(session, RECALIBRATE_EVENT, {
                "shots_hash": shots_hash, "settings_hash": settings_hash,
                "coefficients_digest": coefficients_digest(coefs)}, vector_hash=vec.hash, target_hash=target_hash)
            return RecalibrationResult(vec.name, target_hash, shots_hash, coefs, fit.losses,
                                       fit.seconds, False, cfg)  # fmt: skip

        return self.catalog.transaction(tx)

    def _cached_fit(self, vec: VectorRecord, target_hash: str, shots_hash: str, settings_hash: str) -> RecalibrationResult | None:
        def q(session: Session) -> RecalibrationResult | None:
            row = session.scalar(
                select(m.Recalibration).join(m.Vector).where(
                    m.Vector.hash == vec.hash, m.Recalibration.target_hash == target_hash,
                    m.Recalibration.shots_hash == shots_hash, m.Recalibration.settings_hash == settings_hash))  # fmt: skip
            if row is None or not attested(session, vec.hash, row):
                return None  # a fit no audit event vouches for (older than the check) is fitted again
            return RecalibrationResult(vec.name, target_hash, shots_hash, json.loads(row.coefficients_json),
                                       json.loads(row.losses_json)["curve"], row.seconds, True,
                                       json.loads(row.settings_json))  # fmt: skip

        return self.catalog.read(q)

    def latest_coefficients(self, vec: VectorRecord, target_hash: str) -> dict[str, float] | None:
        """The coefficients of the latest cached fit of ``vec`` for this target (any shots or settings), or None."""

        def q(session: Session) -> str | None:
            row = resolve_vector(session, vec.hash)
            fits = session.scalars(
                select(m.Recalibration)
                .where(m.Recalibration.vector_id == row.id, m.Recalibration.target_hash == target_hash)
                .order_by(m.Recalibration.created_at.desc(), m.Recalibration.id.desc()))  # fmt: skip
            return next((f.coefficients_json for f in fits if attested(session, vec.hash, f)), None)

        found = self.catalog.read(q)
        return None if found is None else {str(k): float(v) for k, v in json.loads(found).items()}

    # --- coefficients of a patch ---------------------------------------------------------

    def coefficients_for(self, vec: VectorRecord, target: str | Path, spec: str, positions: list[int], *,
                         shots: str | Path | Sequence[Probe] | None, settings: FitSettings | None,
                         device: str, progress: Progress | None,
                         target_hash: str | None = None) -> dict[str, float]:  # fmt: skip
        """Resolve ``--coefficients``: auto (recalibrate), uniform[:γ] (RESTA) or a JSON file."""
        keys = [layer_key(lay.index) for lay in vec.layers if lay.position in positions]
        if spec == "auto":
            layer_arg = [lay.index for lay in vec.layers if lay.position in positions and lay.index is not None]
            return self.recalibrate(target, vec.hash, auto_shots(shots), layers=layer_arg, settings=settings,
                                    device=device, progress=progress,
                                    target_hash=target_hash).coefficients  # fmt: skip
        if spec == "uniform" or spec.startswith("uniform:"):
            try:
                gamma = float(spec.split(":", 1)[1]) if ":" in spec else 1.0
            except ValueError:
                raise InvalidInputError(f"bad coefficient spec {spec!r}; use uniform:1.0") from None
            if not math.isfinite(gamma):
                raise InvalidInputError("uniform coefficient must be finite")
            return {k: gamma for k in keys}
        return _coefficients_file(Path(spec), keys)


def _store_probe_set(session: Session, probes: list[Probe]) -> str:
    digest = probes_hash(probes)
    if session.get(m.ProbeSet, digest) is None:
        session.add(m.ProbeSet(hash=digest, num_probes=len(probes),
                               content=json.dumps([p.to_json() for p in probes])))  # fmt: skip
        session.flush()
    return digest


def _coefficients_file(path: Path, keys: list[str]) -> dict[str, float]:
    if not path.is_file():
        raise InvalidInputError(f"--coefficients {path}: not auto, uniform[:γ] or an existing JSON file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("coefficients"), dict):
        obj = obj["coefficients"]
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{path}: expected {{layer index: coefficient}}")
    out = {}
    for k in keys:
        v = obj.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise InvalidInputError(f"{path}: no finite coefficient for layer {k}")
        out[k] = float(v)
    return out

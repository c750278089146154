"""Resolution: which registered vectors fit a target checkpoint, best first, with reasons.

Example:
    >>> Resolver(catalog).resolve("models/my-finetune", limit=3)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ..catalog import models as m
from ..catalog.queries import resolve_checkpoint
from ..catalog.service import Catalog
from ..checkpoints.family import compatibility_reasons, family_key, manifest_hash
from ..checkpoints.reader import Checkpoint


@dataclass(frozen=True)
class Candidate:
    name: str
    hash: str
    family: str
    rank_score: float
    compatible: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Resolver:
    """Ranks the catalog's vectors for a target checkpoint (reads only headers, never tensors).

    Args:
        catalog: vectors, their layer scores and prior patch events.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def resolve(self, target: str | Path, *, limit: int = 10, include_incompatible: bool = False) -> list[Candidate]:
        """Vectors that fit ``target``, best first, each with its reasons.

        Args:
            target: a checkpoint folder.
            limit: at most this many compatible candidates.
            include_incompatible: also list every vector that does not fit, with why.
        """
        ck = Checkpoint(target)
        key = family_key(ck.config, ck.names())
        manifest = ck.manifest()
        return self._ranked(key.id, manifest, manifest_hash(manifest), key.tied_embeddings, limit=limit,
                            include_incompatible=include_incompatible)  # fmt: skip

    def resolve_registered(self, ref: str, *, limit: int = 10) -> list[Candidate]:
        """Vectors that fit a registered checkpoint (REF), from the catalog alone.

        Vectors extracted from checkpoints with its exact tensor manifest fit for sure; for the
        others of its family the tensor shapes are checked against its folder when that folder is
        readable here, and otherwise said to be unchecked.

        Raises:
            CheckpointNotFoundError: no such checkpoint.
        """

        def q(session: Session) -> tuple[str, str, bool, str]:
            row = resolve_checkpoint(session, ref)
            tied = bool(json.loads(row.family.key_json).get("tied_embeddings", False))
            return row.family_id, row.manifest_hash, tied, row.path

        family_id, target_manifest, tied, path = self.catalog.read(q)
        manifest = Checkpoint(path).manifest() if Path(path).is_dir() else None
        return self._ranked(family_id, manifest, target_manifest, tied, limit=limit, include_incompatible=False)

    def _ranked(self, family_id: str, manifest: dict[str, tuple[int, ...]] | None, target_manifest: str,
                tied: bool, *, limit: int, include_incompatible: bool) -> list[Candidate]:  # fmt: skip
        def q(session: Session) -> list[Candidate]:
            # One lean query (no ORM objects): vector columns plus per-vector layer counts.
            scored = func.count(m.VectorLayer.score)
            selected = func.sum(case((m.VectorLayer.selected.is_(True), 1), else_=0))
            stmt = (select(m.Vector.name, m.Vector.hash, m.Vector.family_id, m.Vector.meta_json,
                           m.Vector.aligned_id, m.Vector.degraded_id, scored, selected)
                    .outerjoin(m.VectorLayer, m.VectorLayer.vector_id == m.Vector.id)
                    .group_by(m.Vector.id))  # fmt: skip
            if not include_incompatible:
                stmt = stmt.where(m.Vector.family_id == family_id)
            family_vectors = select(m.Vector.hash).where(m.Vector.family_id == family_id)
            patches = dict(session.execute(
                select(m.AuditEvent.vector_hash, func.count())
                .where(m.AuditEvent.kind == "patch", m.AuditEvent.vector_hash.in_(family_vectors))
                .group_by(m.AuditEvent.vector_hash)).all())  # fmt: skip
            out = [_rank(_RankInput(*row), family_id, manifest, target_manifest, tied,
                         patches.get(row[1], 0)) for row in session.execute(stmt)]  # fmt: skip
            out.sort(key=lambda c: (not c.compatible, -c.rank_score, c.name))
            return out

        cands = self.catalog.read(q)
        good = [c for c in cands if c.compatible][:limit]
        return good + ([c for c in cands if not c.compatible] if include_incompatible else [])


@dataclass(frozen=True)
class _RankInput:
    name: str
    hash: str
    family: str
    meta_json: str
    aligned_id: int | None
    degraded_id: int | None
    scored: int
    selected: int | None


def _rank(vec: _RankInput, family_id: str, manifest: dict[str, tuple[int, ...]] | None, target_manifest: str,
          tied: bool, prior_patches: int) -> Candidate:  # fmt: skip
    reasons: list[str] = []
    meta = json.loads(vec.meta_json)
    if meta.get("source_manifest") == target_manifest:
        problems: list[str] = []  # extracted from checkpoints with this exact manifest: every tensor fits
    elif manifest is None:
        problems = []
        reasons.append("tensor shapes not checked: the checkpoint's folder is not readable here")
    else:
        shapes = {n: tuple(s) for n, s in meta.get("shapes", {}).items()}
        problems = compatibility_reasons(shapes, manifest, target_tied=tied)
    if vec.family != family_id:
        problems.insert(0, f"different family ({vec.family[:12]})")
    if problems:
        return Candidate(vec.name, vec.hash, vec.family, 0.0, False, problems[:5])
    score = 1.0
    reasons.insert(0, "same family" if manifest is None and reasons else "same family; every tensor fits")
    if vec.aligned_id and vec.degraded_id:
        score += 0.1
        reasons.append("provenance: aligned and degraded sources on record")
    if vec.scored:
        sel = int(vec.selected or 0)
        score += 0.3 * sel / vec.scored
        reasons.append(f"layer scores: {sel}/{vec.scored} blocks selected")
    else:
        reasons.append("not scored yet (run `safegene vector score`)")
    if prior_patches:
        score += 0.2 * min(prior_patches, 10) / 10
        reasons.append(f"{prior_patches} prior patch(es) on record")
    return Candidate(vec.name, vec.hash, vec.family, round(score, 4), True, reasons)

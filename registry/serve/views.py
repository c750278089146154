"""What the API and the pages show, built from the façade's records (shared by both front ends).

Paths are hidden unless the operator exposes them: a checkpoint's ``path`` and
an event's ``*_path`` payload keys become null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import Registry
from ..catalog.records import AuditRecord, CheckpointRecord, ModelName, VectorRecord
from ..errors import NotFoundError
from ..method.vectors import VectorDetails

MAX_LINEAGE = 16


@dataclass(frozen=True)
class Page:
    """One page of a listing: ``items`` and whether another page follows."""

    items: list[Any]
    offset: int
    limit: int
    more: bool
    total: int | None = None  # where the listing counted its rows

    @classmethod
    def of(cls, rows: list[Any], offset: int, limit: int) -> Page:
        """From a query asked for ``limit + 1`` rows (the extra one only says there are more)."""
        return cls(rows[:limit], offset, limit, len(rows) > limit)

    def meta(self) -> dict[str, Any]:
        out = {"offset": self.offset, "limit": self.limit, "next_offset": self.offset + self.limit if self.more else None}
        if self.total is not None:
            out["total"] = self.total
        return out


def model_json(rec: CheckpointRecord, expose_paths: bool) -> dict[str, Any]:
    out = rec.to_json()
    if not expose_paths:
        out["path"] = None
    return out


def event_json(rec: AuditRecord, expose_paths: bool) -> dict[str, Any]:
    out = rec.to_json()
    if not expose_paths:
        out["payload"] = {k: (None if k.endswith("_path") else v) for k, v in rec.payload.items()}
    return out


def vector_json(rec: VectorRecord) -> dict[str, Any]:
    out = rec.to_json()
    out["selected_layers"] = [lay.index for lay in rec.selected_layers]
    return out


def patched_models(reg: Registry, vec: VectorRecord, *, offset: int = 0, limit: int = 50) -> Page:
    """The models ``vec`` patched, newest first: event, target, output, λ, actor, time."""
    events, models = reg.patches_of(vec, offset=offset, limit=limit + 1)
    page = Page.of(events, offset, limit)
    return Page(patch_rows(page.items, models), offset, limit, page.more)


def patch_rows(events: list[AuditRecord], known: Mapping[str, ModelName]) -> list[dict[str, Any]]:
    """Patch events as a vector's page lists them, their target and output named where registered."""
    return [{"event": ev.uid, "seq": ev.seq, "actor": ev.actor, "created_at": ev.created_at,
             "coefficients": ev.payload.get("coefficients", {}), "coefficient_spec": ev.payload.get("coefficient_spec"),
             "target": _brief(ev.target_hash, known), "output": _brief(ev.output_hash, known)}
            for ev in events]  # fmt: skip


def vector_page(reg: Registry, ref: str, *, offset: int = 0, limit: int = 50) -> tuple[VectorDetails, Page]:
    """A vector's details and its page of patched models (``Page.total``: every patch event naming it)."""
    det = reg.vector_details(ref, offset=offset, limit=limit)
    more = offset + len(det.patches) < det.num_patches
    return det, Page(patch_rows(det.patches, det.models), offset, limit, more, det.num_patches)


def lineage(reg: Registry, rec: CheckpointRecord) -> dict[str, Any]:
    """Where a checkpoint comes from and what came of it.

    ``ancestors``: its parent, the parent's parent... (task model → patched model);
    ``patched_by``: the patch event that produced it, with the vector and the vector's
    aligned → degraded pair; ``patches``: patch events that took it as their target.
    """
    ancestors: list[dict[str, Any]] = []
    parent = rec.parent
    while parent and len(ancestors) < MAX_LINEAGE:
        try:
            p = reg.get_model(parent)
        except NotFoundError:
            ancestors.append({"hash": parent, "name": None, "role": None})
            break
        ancestors.append({"hash": p.hash, "name": p.name, "role": p.role})
        parent = p.parent
    events = reg.audit_page(model=rec.hash, kind="patch", limit=101)
    made = next((ev for ev in events if ev.output_hash == rec.hash), None)
    patches = [ev for ev in events if ev.target_hash == rec.hash][:100]
    known = reg.models_by_hash([h for ev in events for h in (ev.target_hash, ev.output_hash) if h])
    return {"ancestors": ancestors, "patched_by": _producer(reg, made, known) if made else None,
            "patches": [{"event": ev.uid, "seq": ev.seq, "vector": ev.payload.get("vector"),
                         "vector_hash": ev.vector_hash, "output": _brief(ev.output_hash, known),
                         "coefficients": ev.payload.get("coefficients", {}), "actor": ev.actor,
                         "created_at": ev.created_at} for ev in patches]}  # fmt: skip


def _producer(reg: Registry, ev: AuditRecord, known: dict[str, CheckpointRecord]) -> dict[str, Any]:
    vec: VectorRecord | None
    try:
        vec = reg.get_vector(ev.vector_hash) if ev.vector_hash else None
    except NotFoundError:
        vec = None  # removed since: the event still names its hash
    pair = reg.models_by_hash([h for h in ((vec.aligned, vec.degraded) if vec else ()) if h])
    return {"event": ev.uid, "seq": ev.seq, "actor": ev.actor, "created_at": ev.created_at,
            "coefficients": ev.payload.get("coefficients", {}), "target": _brief(ev.target_hash, known),
            "vector": {"name": vec.name if vec else ev.payload.get("vector"), "hash": ev.vector_hash,
                       "registered": vec is not None,
                       "aligned": _brief(vec.aligned, pair) if vec else None,
                       "degraded": _brief(vec.degraded, pair) if vec else None}}  # fmt: skip


def _brief(h: str | None, known: Mapping[str, CheckpointRecord | ModelName]) -> dict[str, Any] | None:
    if h is None:
        return None
    rec = known.get(h)
    return {"hash": h, "name": rec.name if rec else None, "role": rec.role if rec else None}

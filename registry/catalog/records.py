"""Frozen records returned by the public API (ORM rows stay inside ``registry``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, NamedTuple

from . import models as m

_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


_SCALARS = frozenset({str, int, float, bool, type(None), dict})  # passed on as they are, without a check per kind


def plain(rec: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict, like ``dataclasses.asdict`` without its deep copy (a third of a web
    listing's time): nested records become dicts; other nested values are the record's own, not copies."""
    out = {}
    for name in _names(type(rec)):
        value = getattr(rec, name)
        if type(value) in _SCALARS:
            pass
        elif is_dataclass(value):
            value = plain(value)
        elif isinstance(value, list) and value and is_dataclass(value[0]):
            value = [plain(v) for v in value]
        out[name] = value
    return out


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


@dataclass(frozen=True)
class FamilyRecord:
    id: str
    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    manifest_hash: str
    key: dict[str, Any]
    layer_templates: list[str]
    created_at: str
    num_checkpoints: int = 0
    num_vectors: int = 0

    @classmethod
    def from_row(cls, row: m.Family, *, checkpoints: int = 0, vectors: int = 0) -> FamilyRecord:
        return cls(
            id=row.id,
            model_type=row.model_type,
            architecture=row.architecture,
            num_layers=row.num_layers,
            hidden_size=row.hidden_size,
            vocab_size=row.vocab_size,
            manifest_hash=row.manifest_hash,
            key=json.loads(row.key_json),
            layer_templates=json.loads(row.layer_templates),
            created_at=_iso(row.created_at),
            num_checkpoints=checkpoints,
            num_vectors=vectors,
        )

    def to_json(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class FamilySummary:
    """A family as a listing shows it: identity, shape and counts (:class:`FamilyRecord` has its key and
    layer templates as well)."""

    id: str
    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    manifest_hash: str
    created_at: str
    num_checkpoints: int
    num_vectors: int

    @classmethod
    def from_row(cls, row: Any) -> FamilySummary:
        """From a core row with these column names (``created_at`` a datetime)."""
        return cls(id=row.id, model_type=row.model_type, architecture=row.architecture, num_layers=row.num_layers,
                   hidden_size=row.hidden_size, vocab_size=row.vocab_size, manifest_hash=row.manifest_hash,
                   created_at=_iso(row.created_at), num_checkpoints=row.num_checkpoints, num_vectors=row.num_vectors)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class CheckpointRecord:
    name: str
    hash: str
    role: str
    family: str
    path: str
    manifest_hash: str
    dtype: str
    num_tensors: int
    num_params: int
    total_bytes: int
    parent: str | None
    created_by: str
    created_at: str

    @classmethod
    def from_row(cls, row: m.Checkpoint, *, parent: str | None = None) -> CheckpointRecord:
        return cls(
            name=row.name,
            hash=row.hash,
            role=row.role,
            family=row.family_id,
            path=row.path,
            manifest_hash=row.manifest_hash,
            dtype=row.dtype,
            num_tensors=row.num_tensors,
            num_params=row.num_params,
            total_bytes=row.total_bytes,
            parent=parent,
            created_by=row.created_by,
            created_at=_iso(row.created_at),
        )

    def to_json(self) -> dict[str, Any]:
        return plain(self)


# The ``vector_layers`` columns a LayerRecord is made from, in the order of its fields.
LAYER_COLUMNS = ("position", "layer_index", "label", "tensor_names", "blob_sha256", "norm", "score", "safety_gain",
                 "task_cost", "selected", "probe_set_hash")  # fmt: skip


@dataclass(frozen=True)
class LayerRecord:
    position: int
    index: int | None
    label: str
    tensor_names: list[str]
    blob: str
    norm: float
    score: float | None
    safety_gain: float | None
    task_cost: float | None
    selected: bool
    probe_set: str | None

    @classmethod
    def from_row(cls, row: Any) -> LayerRecord:
        """From an ORM row or a core row of ``vector_layers``."""
        return cls.from_values(*(getattr(row, c) for c in LAYER_COLUMNS))

    @classmethod
    def from_values(cls, position: int, layer_index: int | None, label: str, tensor_names: str, blob_sha256: str,
                    norm: float, score: float | None, safety_gain: float | None, task_cost: float | None,
                    selected: bool, probe_set_hash: str | None) -> LayerRecord:  # fmt: skip
        """From the values of :data:`LAYER_COLUMNS`, in that order (a listing's plain row tuples)."""
        return cls(position, layer_index, label, json.loads(tensor_names), blob_sha256, norm, score, safety_gain,
                   task_cost, selected, probe_set_hash)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class VectorRecord:
    name: str
    hash: str
    family: str
    aligned: str | None
    degraded: str | None
    encoding: str
    tensor_scope: str
    raw_size: int
    stored_size: int
    created_by: str
    created_at: str
    meta: dict[str, Any]
    layers: list[LayerRecord] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: m.Vector) -> VectorRecord:
        return cls.build(
            row,
            aligned=row.aligned.hash if row.aligned else None,
            degraded=row.degraded.hash if row.degraded else None,
            layers=[LayerRecord.from_row(layer) for layer in row.layers],
        )

    @classmethod
    def build(cls, row: Any, *, aligned: str | None, degraded: str | None, layers: list[LayerRecord]) -> VectorRecord:
        """From an ORM row or a core row with the same column names."""
        return cls(
            name=row.name,
            hash=row.hash,
            family=row.family_id,
            aligned=aligned,
            degraded=degraded,
            encoding=row.encoding,
            tensor_scope=row.tensor_scope,
            raw_size=row.raw_size,
            stored_size=row.stored_size,
            created_by=row.created_by,
            created_at=_iso(row.created_at),
            meta=json.loads(row.meta_json),
            layers=layers,
        )

    @property
    def selected_layers(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.selected]

    def manifest(self) -> dict[str, tuple[int, ...]]:
        shapes = self.meta.get("shapes", {})
        return {n: tuple(s) for n, s in shapes.items()}

    def to_json(self) -> dict[str, Any]:
        out = plain(self)
        out["layers"] = [
            {**layer.to_json(), "index": layer.index, "score": layer.score, "selected": layer.selected}
            for layer in self.layers
        ]
        return out


class ModelName(NamedTuple):
    """A registered checkpoint as a listing names it."""

    name: str
    role: str


@dataclass(frozen=True)
class AuditRecord:
    id: int
    seq: int
    uid: str
    kind: str
    actor: str
    tool_version: str
    created_at: str
    vector_hash: str | None
    target_hash: str | None
    output_hash: str | None
    payload: dict[str, Any]
    prev_hash: str
    entry_hash: str
    signer: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> AuditRecord:
        """From an ORM row or a core row of ``audit_events``."""
        return cls(
            id=row.id,
            seq=row.seq,
            uid=row.uid,
            kind=row.kind,
            actor=row.actor,
            tool_version=row.tool_version,
            created_at=row.created_at,
            vector_hash=row.vector_hash,
            target_hash=row.target_hash,
            output_hash=row.output_hash,
            payload=json.loads(row.payload_json),
            prev_hash=row.prev_hash,
            entry_hash=row.entry_hash,
            signer=row.signer,
        )

    def to_json(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class RecalibrationRecord:
    """A cached coefficient fit of a vector for a target (see ``safegene recalibrate``)."""

    vector: str
    target: str
    shots: str
    coefficients: dict[str, float]
    losses: list[float]
    seconds: float
    settings: dict[str, Any]
    created_at: str

    @classmethod
    def from_row(cls, row: m.Recalibration, vector_name: str) -> RecalibrationRecord:
        return cls(vector_name, row.target_hash, row.shots_hash, json.loads(row.coefficients_json),
                   json.loads(row.losses_json).get("curve", []), row.seconds, json.loads(row.settings_json),
                   _iso(row.created_at))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return plain(self)

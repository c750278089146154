"""Catalog look-ups shared by the operation modules (ORM rows stay in here)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import QueryableAttribute, Session, joinedload, with_expression
from sqlalchemy.sql.base import ExecutableOption

from ..checkpoints.family import FamilyKey, layer_templates
from ..errors import (
    AmbiguousReferenceError,
    CheckpointNotFoundError,
    FamilyNotFoundError,
    InvalidInputError,
    NotFoundError,
    VectorNotFoundError,
)
from . import models as m

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]{4,64}$")
_LS_COMMAND = {"checkpoint": "model", "family": "family", "vector": "vector"}


def check_name(name: str, what: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise InvalidInputError(
            f"{what} {name[:60]!r} is not allowed: use 1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def contains_pattern(text: str) -> str:
    """A LIKE pattern (escape character ``\\``) matching values that contain ``text`` literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def is_hash_prefix(text: str) -> bool:
    """Whether ``text`` can be a (prefix of a) content hash: 4 to 64 lowercase hex digits."""
    return bool(_HEX_RE.match(text))


def search_condition(text: str, names: Sequence[QueryableAttribute[str]],
                     hash_col: QueryableAttribute[str]) -> ColumnElement[bool] | None:  # fmt: skip
    """What the search box matches: any of ``names`` containing ``text`` (case-insensitive), or
    ``hash_col`` starting with it when it looks like a hash prefix; None for blank text."""
    needle = text.strip()
    if not needle:
        return None
    pat = contains_pattern(needle)
    cond = or_(*(col.ilike(pat, escape="\\") for col in names))
    if is_hash_prefix(needle.lower()):
        cond = cond | hash_col.startswith(needle.lower())
    return cond


def default_name(path: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "-", path.name).lstrip("-._") or "checkpoint"
    return base[:100]


def free_name(session: Session, base: str, digest: str) -> str:
    taken = session.scalar(select(m.Checkpoint.id).where(m.Checkpoint.name == base))
    return f"{base}-{digest[:8]}" if taken else base


def get_or_create_family(
    session: Session, key: FamilyKey, mhash: str, names: list[str]
) -> m.Family:
    row = session.get(m.Family, key.id)
    if row is not None:
        return row
    row = m.Family(
        id=key.id,
        model_type=key.model_type,
        architecture=key.architecture,
        num_layers=key.num_layers,
        hidden_size=key.hidden,
        vocab_size=key.vocab,
        key_json=json.dumps(key.to_json(), sort_keys=True),
        manifest_hash=mhash,
        layer_templates=json.dumps(layer_templates(names)),
    )
    session.add(row)
    session.flush()
    return row


def by_ref(session: Session, model: type, ref: str, hash_col: str, exc: type[NotFoundError],
           load: Sequence[ExecutableOption] = ()) -> object:  # fmt: skip
    """A row by name, else by hash prefix; ``load``: loader options (relationships loaded in the same query)."""

    def rows(stmt: Select[Any], n: int) -> list[object]:
        return list(session.execute(stmt.options(*load).limit(n)).unique().scalars())

    name_col = getattr(model, "name", None)
    if name_col is not None:
        found = rows(select(model).where(name_col == ref), 1)
        if found:
            return found[0]
    if _HEX_RE.match(ref):
        col = getattr(model, hash_col)
        # A full hash is an equality (the unique index); LIKE 'prefix%' cannot use a btree index
        # under PostgreSQL's default collation and would scan the table.
        cond = col == ref if len(ref) == 64 else col.startswith(ref)
        matches = rows(select(model).where(cond), 5)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousReferenceError(ref, [getattr(r, hash_col) for r in matches])
    raise exc(ref, f"list them with `safegene {_LS_COMMAND.get(exc.kind, exc.kind)} ls`")


def resolve_checkpoint(session: Session, ref: str) -> m.Checkpoint:
    row = by_ref(session, m.Checkpoint, ref, "hash", CheckpointNotFoundError)
    assert isinstance(row, m.Checkpoint)
    return row


def resolve_family(session: Session, ref: str) -> m.Family:
    """A family by model type or architecture (when unique), or by id prefix."""
    by_type = or_(m.Family.model_type == ref, m.Family.architecture == ref)
    rows = list(session.scalars(select(m.Family).where(by_type).limit(5)))
    if len(rows) == 1:
        return rows[0]
    if len(rows) > 1:
        raise AmbiguousReferenceError(ref, [r.id for r in rows])
    found = by_ref(session, m.Family, ref, "id", FamilyNotFoundError)
    assert isinstance(found, m.Family)
    return found


@functools.cache
def _vector_load(whole: bool, counted: bool) -> tuple[ExecutableOption, ...]:
    """``resolve_vector``'s loader options, built once (building them took longer than the query)."""
    load: list[ExecutableOption] = []
    if whole:
        load += [joinedload(m.Vector.layers), joinedload(m.Vector.aligned), joinedload(m.Vector.degraded)]
    if counted:
        recals = select(func.count()).select_from(m.Recalibration).where(m.Recalibration.vector_id == m.Vector.id)
        patches = (select(func.count()).select_from(m.AuditEvent)
                   .where(m.AuditEvent.vector_hash == m.Vector.hash, m.AuditEvent.kind == "patch"))  # fmt: skip
        load += [with_expression(m.Vector.num_recalibrations, recals.correlate(m.Vector).scalar_subquery()),
                 with_expression(m.Vector.num_patches, patches.correlate(m.Vector).scalar_subquery())]  # fmt: skip
    return tuple(load)


def resolve_vector(session: Session, ref: str, *, whole: bool = False, counted: bool = False) -> m.Vector:
    """A vector by name or hash prefix; ``whole``: its layers and aligned/degraded pair loaded in the same query
    (one round trip where lazy loading took three); ``counted``: its ``num_recalibrations`` and ``num_patches``
    (patch events naming it) counted in that query too."""
    row = by_ref(session, m.Vector, ref, "hash", VectorNotFoundError, _vector_load(whole, counted))
    assert isinstance(row, m.Vector)
    return row

"""The audit log service: appending events to the chain, listing, showing and verifying them.

Example:
    >>> log = AuditLog(catalog, signer=None)                  # doctest: +SKIP
    >>> catalog.transaction(lambda s: log.append(s, "note", {"text": "hello"}))  # doctest: +SKIP
    >>> log.verify().ok                                       # doctest: +SKIP
    True
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session, aliased

from ..catalog import models as m
from ..catalog.queries import resolve_checkpoint, resolve_family, resolve_vector
from ..catalog.records import AuditRecord, ModelName
from ..catalog.service import Catalog, current_actor
from ..errors import EventNotFoundError, InvalidInputError
from .attest import check_recalibrations
from .chain import ChainReport, append_event, check_vector_states, verify_chain
from .signing import load_key, public_hex


@functools.cache
def _patches_stmt() -> Select[Any]:
    """Patch events naming a vector, with their target's and output's names and roles: built once (aliasing
    a mapped class on every call cost more than the query)."""
    ev, target, output = m.AuditEvent, aliased(m.Checkpoint), aliased(m.Checkpoint)
    return (select(ev.__table__, target.name.label("t_name"), target.role.label("t_role"),
                   output.name.label("o_name"), output.role.label("o_role"))
            .outerjoin(target, target.hash == ev.target_hash).outerjoin(output, output.hash == ev.output_hash)
            .where(ev.kind == "patch", ev.vector_hash == bindparam("vector_hash")).order_by(ev.seq.desc())
            .offset(bindparam("offset")).limit(bindparam("limit")))  # fmt: skip


class AuditLog:
    """The append-only, hash-chained record of what was registered, scored, removed and patched.

    Args:
        catalog: where the events live.
        signer: an Ed25519 private key (see :func:`registry.audit.signing.load_key`)
            that signs every event appended through this log, or None.
    """

    def __init__(self, catalog: Catalog, signer: Any = None) -> None:
        self.catalog = catalog
        self.signer = signer

    def append(self, session: Session, kind: str, payload: dict[str, Any], *, uid: str | None = None,
               vector_hash: str | None = None, target_hash: str | None = None,
               output_hash: str | None = None) -> AuditRecord:  # fmt: skip
        """Append one event inside the caller's transaction, as the current actor, signed when a signer is set.

        Returns:
            The event as recorded (its ``seq`` is final once the transaction commits).
        """
        row = append_event(session, kind, payload, actor=current_actor(), uid=uid, vector_hash=vector_hash,
                           target_hash=target_hash, output_hash=output_hash, sign_key=self.signer)  # fmt: skip
        return AuditRecord.from_row(row)

    def events(self, *, model: str | None = None, vector: str | None = None, family: str | None = None,
               kind: str | None = None, actor: str | None = None, since: str | None = None,
               limit: int | None = None) -> list[AuditRecord]:  # fmt: skip
        """Events oldest first, filtered by checkpoint, vector (a removed one by full hash), family,
        kind, actor or ISO time; ``limit``: only the last N.

        Raises:
            NotFoundError: ``model``, ``vector`` or ``family`` names nothing.
            InvalidInputError: ``since`` is not an ISO date/time.
        """

        def q(session: Session) -> list[AuditRecord]:
            stmt = _filtered(session, select(m.AuditEvent).order_by(m.AuditEvent.seq), model=model, vector=vector,
                             family=family, kind=kind, actor=actor, since=since)  # fmt: skip
            rows = list(session.scalars(stmt))
            return [AuditRecord.from_row(r) for r in (rows[-limit:] if limit else rows)]

        return self.catalog.read(q)

    def page(self, *, model: str | None = None, vector: str | None = None, family: str | None = None,
             kind: str | None = None, actor: str | None = None, since: str | None = None, offset: int = 0,
             limit: int = 50, vector_hash: str | None = None) -> list[AuditRecord]:  # fmt: skip
        """One page of events, newest first (by seq), with the filters of :meth:`events`
        (``vector_hash``: a vector's full hash, used as is, where ``vector`` is looked up).

        Raises:
            NotFoundError: ``model``, ``vector`` or ``family`` names nothing.
            InvalidInputError: ``since`` is not an ISO date/time.
        """

        def q(session: Session) -> list[AuditRecord]:
            # Plain rows, not ORM objects: a page is read-only, and building 50 ORM objects was most of its time.
            stmt = _filtered(session, select(m.AuditEvent.__table__).order_by(m.AuditEvent.seq.desc()), model=model,
                             vector=vector, family=family, kind=kind, actor=actor, since=since)  # fmt: skip
            if vector_hash is not None:
                stmt = stmt.where(m.AuditEvent.vector_hash == vector_hash)
            return [AuditRecord.from_row(r) for r in session.execute(stmt.offset(offset or None).limit(limit))]

        return self.catalog.read(q)

    def patches(self, vector_hash: str, *, offset: int = 0, limit: int = 50) -> tuple[list[AuditRecord], dict[str, ModelName]]:
        """One page of the patch events naming a vector (its full hash), newest first, with the registered
        checkpoints among their targets and outputs by hash: one query (a vector's page)."""

        def q(session: Session) -> tuple[list[AuditRecord], dict[str, ModelName]]:
            events, names = [], {}
            for r in session.execute(_patches_stmt(), {"vector_hash": vector_hash, "offset": offset, "limit": limit}):
                events.append(AuditRecord.from_row(r))
                if r.t_name is not None:
                    names[r.target_hash] = ModelName(r.t_name, r.t_role)
                if r.o_name is not None:
                    names[r.output_hash] = ModelName(r.o_name, r.o_role)
            return events, names

        return self.catalog.read(q)

    def show(self, ref: str) -> AuditRecord:
        """An event by seq number, uid or uid prefix.

        Raises:
            EventNotFoundError: no such event (or the prefix is ambiguous).
        """

        def q(session: Session) -> AuditRecord:
            row = None
            if ref.isascii() and ref.isdigit() and len(ref) <= 18:  # a seq (longer: beyond any column)
                row = session.scalar(select(m.AuditEvent).where(m.AuditEvent.seq == int(ref)))
            if row is None and len(ref) >= 4:
                rows = list(session.scalars(select(m.AuditEvent).where(m.AuditEvent.uid.startswith(ref)).limit(2)))
                row = rows[0] if len(rows) == 1 else None
            if row is None:
                raise EventNotFoundError(ref, "give a seq number or event id from `safegene audit log`")
            return AuditRecord.from_row(row)

        return self.catalog.read(q)

    def show_uid(self, uid: str) -> AuditRecord:
        """An event by its full uid.

        Raises:
            EventNotFoundError: no event has this uid.
        """

        def q(session: Session) -> AuditRecord:
            row = session.scalar(select(m.AuditEvent).where(m.AuditEvent.uid == uid))
            if row is None:
                raise EventNotFoundError(uid)
            return AuditRecord.from_row(row)

        return self.catalog.read(q)

    def latest_patch_of(self, output_hash: str) -> AuditRecord | None:
        """The latest patch event whose output has this content hash, or None."""
        stmt = (select(m.AuditEvent).where(m.AuditEvent.kind == "patch", m.AuditEvent.output_hash == output_hash)
                .order_by(m.AuditEvent.seq.desc()).limit(1))  # fmt: skip

        def q(session: Session) -> AuditRecord | None:
            row = session.scalar(stmt)
            return AuditRecord.from_row(row) if row is not None else None

        return self.catalog.read(q)

    def verify(self, *, verify_key: str | Path | None = None) -> ChainReport:
        """Walk the chain; with ``verify_key`` (PEM public key) every event must carry its signature."""
        key_hex = public_hex(load_key(Path(verify_key), private=False)) if verify_key else None
        return self.catalog.read(lambda s: verify_chain(s, verify_key=key_hex))

    def head(self) -> dict[str, Any]:
        """The chain's length and head hash (keep it elsewhere as an anchor) and whether it holds."""
        rep = self.verify()
        return {"length": rep.length, "head": rep.head, "ok": rep.ok}

    def check_vector_states(self) -> list[str]:
        """Problems where a vector's layer table differs from what its last audit event recorded."""
        return self.catalog.read(check_vector_states)

    def check_recalibrations(self) -> list[str]:
        """Problems where a cached fit's coefficients differ from what its audit event recorded."""
        return self.catalog.read(check_recalibrations)


def _filtered(session: Session, stmt: Select[m.AuditEvent], *, model: str | None, vector: str | None,
              family: str | None, kind: str | None, actor: str | None,
              since: str | None) -> Select[m.AuditEvent]:  # fmt: skip
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
    return stmt


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

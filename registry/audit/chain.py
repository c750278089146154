"""The audit trail: an append-only hash chain of events.

Each event stores ``prev_hash`` (the previous event's ``entry_hash``, or 64
zeros for the first) and ``entry_hash = sha256(canonical JSON of the row ‖
prev_hash)``; the row includes who signed it (``signer``, from hash version 2
on: events written before migration 0004 keep version 1), and the signature
signs the entry hash. Editing any field, stripping or swapping a signature,
deleting or reordering rows breaks the chain at the first altered entry. Appends are serialized (SQLite: the write lock
``BEGIN IMMEDIATE`` already holds; PostgreSQL: a transaction-scoped advisory
lock) so the chain stays linear under concurrent writers.

Limit: someone who can rewrite the whole table can rebuild a consistent
chain; keep the head (``audit head``) somewhere else to detect that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from .._version import __version__
from ..catalog import models as m
from ..catalog.db import AUDIT_LOCK_KEY
from .signing import event_signature_ok, public_hex, sign_event

GENESIS = "0" * 64


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


HASH_VERSION = 2  # what new events are written with (see _row_fields)


def _row_fields(row: m.AuditEvent) -> dict[str, Any]:
    fields = {
        "seq": row.seq,
        "uid": row.uid,
        "kind": row.kind,
        "actor": row.actor,
        "tool_version": row.tool_version,
        "created_at": row.created_at,
        "vector_hash": row.vector_hash,
        "target_hash": row.target_hash,
        "output_hash": row.output_hash,
        "payload": json.loads(row.payload_json),
    }
    if row.hash_version != 1:  # version 2 also covers who signed, and the version itself
        fields.update(hash_version=row.hash_version, signer=row.signer)
    return fields


def entry_hash(row: m.AuditEvent) -> str:
    data = canonical_json(_row_fields(row)).encode("utf-8") + b"|" + row.prev_hash.encode()
    return hashlib.sha256(data).hexdigest()


def new_uid() -> str:
    return str(uuid.uuid4())


def append_event(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    actor: str,
    uid: str | None = None,
    vector_hash: str | None = None,
    target_hash: str | None = None,
    output_hash: str | None = None,
    sign_key: Any = None,
) -> m.AuditEvent:
    """Append one event inside the caller's transaction (serialized across writers).

    ``sign_key`` (an Ed25519 private key) adds a signature over the entry hash.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
    last = session.scalar(select(m.AuditEvent).order_by(m.AuditEvent.seq.desc()).limit(1))
    row = m.AuditEvent(
        seq=(last.seq + 1) if last else 1,
        uid=uid or new_uid(),
        kind=kind,
        actor=actor,
        tool_version=__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        vector_hash=vector_hash,
        target_hash=target_hash,
        output_hash=output_hash,
        payload_json=canonical_json(payload),
        prev_hash=last.entry_hash if last else GENESIS,
        hash_version=HASH_VERSION,
        signer=public_hex(sign_key) if sign_key is not None else None,
    )
    row.entry_hash = entry_hash(row)
    if sign_key is not None:
        row.signer, row.signature = sign_event(sign_key, row.entry_hash)
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    problems: list[str]
    length: int
    head: str
    first_bad_seq: int | None = None


def verify_chain(session: Session, *, verify_key: str | None = None) -> ChainReport:
    """Walk the chain in sequence order; name the first entry that does not hold.

    Signatures present are always checked against their signer; with
    ``verify_key`` (public key hex) every event must be signed by that key.
    """
    problems: list[str] = []
    prev, expected_seq, first_bad = GENESIS, 1, None
    rows = session.scalars(select(m.AuditEvent).order_by(m.AuditEvent.seq))
    count = 0
    for row in rows:
        count += 1
        issue = None
        if row.seq != expected_seq:
            issue = f"event seq {row.seq} (id {row.id}): expected seq {expected_seq}; an entry was deleted or reordered"
        elif row.prev_hash != prev:
            issue = f"event seq {row.seq} (id {row.id}): prev_hash does not match the entry before it"
        elif row.hash_version not in (1, HASH_VERSION):
            issue = f"event seq {row.seq} (id {row.id}): unknown hash_version {row.hash_version} (edited?)"
        elif entry_hash(row) != row.entry_hash:
            issue = f"event seq {row.seq} (id {row.id}): contents do not match its entry_hash (edited)"
        else:
            issue = _signature_issue(row, verify_key)
        if issue:
            problems.append(issue)
            first_bad = first_bad or row.seq
            break
        prev, expected_seq = row.entry_hash, expected_seq + 1
    return ChainReport(not problems, problems, count, prev, first_bad)


def _signature_issue(row: m.AuditEvent, verify_key: str | None) -> str | None:
    if row.signature or row.signer:
        if not (row.signer and row.signature and event_signature_ok(row.signer, row.signature, row.entry_hash)):
            return f"event seq {row.seq} (id {row.id}): signature does not verify (forged or edited)"
    if verify_key is not None and row.signer != verify_key:
        return f"event seq {row.seq} (id {row.id}): not signed by the given key"
    return None


def vector_state_digest(vector: m.Vector) -> str:
    """Digest of a vector's mutable catalog state (layer scores and selection)."""
    layers = [
        [lay.position, lay.layer_index, lay.blob_sha256, round(lay.norm, 9),
         None if lay.score is None else round(lay.score, 9),
         None if lay.safety_gain is None else round(lay.safety_gain, 9),
         None if lay.task_cost is None else round(lay.task_cost, 9),
         bool(lay.selected), lay.probe_set_hash]
        for lay in sorted(vector.layers, key=lambda x: x.position)
    ]  # fmt: skip
    canon = canonical_json({"name": vector.name, "hash": vector.hash, "layers": layers})
    return hashlib.sha256(canon.encode()).hexdigest()


def check_vector_states(session: Session) -> list[str]:
    """Each vector's layer table must match the digest its last audit event recorded."""
    problems = []
    for vec in session.scalars(select(m.Vector).order_by(m.Vector.id)):
        last = session.scalar(
            select(m.AuditEvent)
            .where(m.AuditEvent.vector_hash == vec.hash)
            .where(m.AuditEvent.kind.in_(("vector.register", "vector.score")))
            .order_by(m.AuditEvent.seq.desc())
            .limit(1)
        )
        if last is None:
            problems.append(f"vector {vec.name}: no registration event in the audit chain")
            continue
        recorded = json.loads(last.payload_json).get("state_digest")
        if recorded != vector_state_digest(vec):
            problems.append(
                f"vector {vec.name}: layer scores/selection differ from audit event seq {last.seq} (edited)"
            )
    return problems

"""What the audit chain vouches for besides its own events: cached recalibrations.

A recalibration appends an event recording the digest of the coefficients it
cached (:data:`RECALIBRATE_EVENT`); before a cached fit is used (``patch
--coefficients auto``, a PEFT export) it is checked against that event, and
``verify`` checks every cached fit, so editing a λ row in the catalog is caught.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..catalog import models as m
from ..errors import IntegrityCheckError
from .chain import canonical_json

RECALIBRATE_EVENT = "recalibrate"


def coefficients_digest(coefficients: dict[str, float]) -> str:
    """sha256 of the canonical JSON of a fit's coefficients (what its audit event records)."""
    return hashlib.sha256(canonical_json(coefficients).encode()).hexdigest()


def attested(session: Session, vector_hash: str, fit: m.Recalibration) -> bool:
    """Whether the chain's latest event for this fit records these very coefficients.

    Raises:
        IntegrityCheckError: an event covers the fit and records other coefficients (the row was edited).
    """
    events = session.scalars(
        select(m.AuditEvent.payload_json).where(
            m.AuditEvent.kind == RECALIBRATE_EVENT, m.AuditEvent.vector_hash == vector_hash,
            m.AuditEvent.target_hash == fit.target_hash).order_by(m.AuditEvent.seq.desc()))  # fmt: skip
    for payload_json in events:
        payload = json.loads(payload_json)
        if payload.get("shots_hash") == fit.shots_hash and payload.get("settings_hash") == fit.settings_hash:
            if payload.get("coefficients_digest") != coefficients_digest(json.loads(fit.coefficients_json)):
                raise IntegrityCheckError(
                    f"the cached coefficients of vector {vector_hash[:12]} for target {fit.target_hash[:12]} do not "
                    "match the audit event that recorded them (edited?); run `safegene verify`")
            return True
    return False


def check_recalibrations(session: Session) -> list[str]:
    """Problems: cached fits whose coefficients differ from what their audit event recorded."""
    problems = []
    for fit, vector_hash in session.execute(select(m.Recalibration, m.Vector.hash).join(m.Vector)):
        try:
            attested(session, vector_hash, fit)
        except IntegrityCheckError as exc:
            problems.append(str(exc))
    return problems

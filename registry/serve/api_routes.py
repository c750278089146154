"""The JSON API under ``/api``: thin routes, one façade call each (plus the presenters in views)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..errors import InvalidInputError
from .errors import error_body
from .params import Cfg, HashPrefix, Limit, Offset, Ref, Reg, Text
from .views import (
    Page,
    event_json,
    lineage,
    model_json,
    patched_models,
    vector_json,
    vector_page,
)

router = APIRouter(prefix="/api", tags=["api"])
CHAIN_TTL_S = 5.0


@router.get("/health")
def health(reg: Reg) -> JSONResponse:
    """Liveness and the catalog it serves (the URL without any password)."""
    return _json({"ok": True, "catalog": reg.safe_url.split("://", 1)[0]})


@router.get("/families")
def families(reg: Reg, offset: Offset = 0, limit: Limit = 50) -> JSONResponse:
    """The inventory: families with their checkpoint and vector counts (the family's own page has its key
    and layer templates)."""
    page = Page.of(reg.families_page(offset=offset, limit=limit + 1), offset, limit)
    return _json({"families": [f.to_json() for f in page.items], "page": page.meta()})


@router.get("/families/{ref}")
def family(reg: Reg, cfg: Cfg, ref: Ref, limit: Limit = 50) -> JSONResponse:
    """One family with the first page of its vectors (newest first) and checkpoints (oldest first)."""
    fam = reg.get_family(ref)
    vecs = Page.of(reg.vectors_page(family=fam.id, limit=limit + 1), 0, limit)
    models = Page.of(reg.list_models(family=fam.id, limit=limit + 1), 0, limit)
    return _json({"family": fam.to_json(), "vectors": [vector_json(v) for v in vecs.items], "vectors_page": vecs.meta(),
            "checkpoints": [model_json(c, cfg.expose_paths) for c in models.items],
            "checkpoints_page": models.meta()})  # fmt: skip


@router.get("/vectors")
def vectors(reg: Reg, family: Text = None, offset: Offset = 0, limit: Limit = 50) -> JSONResponse:
    """Vectors newest first (ties by id), optionally of one family."""
    page = Page.of(reg.vectors_page(family=family, offset=offset, limit=limit + 1), offset, limit)
    return _json({"vectors": [vector_json(v) for v in page.items], "page": page.meta()})


@router.get("/vectors/{ref}")
def vector(reg: Reg, cfg: Cfg, ref: Ref) -> JSONResponse:
    """A vector's provenance (aligned/degraded pair), layer scores, recalibrations and the first patched models."""
    det, patched = vector_page(reg, ref)
    return _json({"vector": vector_json(det.vector),
            "aligned": model_json(det.aligned, cfg.expose_paths) if det.aligned else None,
            "degraded": model_json(det.degraded, cfg.expose_paths) if det.degraded else None,
            "recalibrations": [r.to_json() for r in det.recalibrations], "num_recalibrations": det.num_recalibrations,
            "patched": patched.items, "patched_page": patched.meta()})  # fmt: skip


@router.get("/vectors/{ref}/patched")
def vector_patched(reg: Reg, ref: Ref, offset: Offset = 0, limit: Limit = 50) -> JSONResponse:
    """Every model the vector patched: vector, λ, event, actor, time (newest first)."""
    page = patched_models(reg, reg.get_vector(ref), offset=offset, limit=limit)
    return _json({"patched": page.items, "page": page.meta()})


@router.get("/models")
def models(reg: Reg, cfg: Cfg, family: Text = None, role: Text = None, offset: Offset = 0,
           limit: Limit = 50) -> JSONResponse:  # fmt: skip
    """Checkpoints oldest first (ties by id), optionally of one family or role."""
    page = Page.of(reg.list_models(family=family, role=role, offset=offset, limit=limit + 1), offset, limit)
    return _json({"models": [model_json(c, cfg.expose_paths) for c in page.items], "page": page.meta()})


@router.get("/models/{ref}")
def model(reg: Reg, cfg: Cfg, ref: Ref) -> JSONResponse:
    """A checkpoint and its lineage (aligned → degraded → vector; task model → patched model)."""
    rec = reg.get_model(ref)
    return _json({"model": model_json(rec, cfg.expose_paths), "lineage": lineage(reg, rec)})


@router.get("/audit")
def audit(reg: Reg, cfg: Cfg, model: Text = None, vector: Text = None, family: Text = None, kind: Text = None,
          actor: Text = None, since: Text = None, offset: Offset = 0, limit: Limit = 50) -> JSONResponse:  # fmt: skip
    """Audit events newest first, with the filters of `safegene audit log`."""
    rows = reg.audit_page(model=model, vector=vector, family=family, kind=kind, actor=actor, since=since,
                          offset=offset, limit=limit + 1)  # fmt: skip
    page = Page.of(rows, offset, limit)
    return _json({"events": [event_json(e, cfg.expose_paths) for e in page.items], "page": page.meta()})


@router.get("/audit/{ref}")
def audit_event(reg: Reg, cfg: Cfg, ref: Ref) -> JSONResponse:
    """One event by seq number or event id (prefix)."""
    return _json(event_json(reg.audit_show(ref), cfg.expose_paths))


@router.get("/chain")
def chain(request: Request, reg: Reg) -> JSONResponse:
    """`audit verify`'s answer and the head (cached for a few seconds)."""
    return _json(chain_status(request, reg))


@router.get("/identify")
def identify_hash(reg: Reg, hash: HashPrefix) -> JSONResponse:  # noqa: A002 - the API's word
    """The patch event that produced a checkpoint with this tensor content hash (64 hex digits)."""
    if len(hash) != 64:
        raise InvalidInputError("give the full 64-digit tensor content hash (`safegene model add` prints it)")
    return _json(reg.identify_hash(hash).to_json())


@router.post("/identify", openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}})
async def identify_headers(request: Request) -> JSONResponse:
    """The patch event named in an uploaded safetensors header (the file's first 8 + N bytes; never the weights)."""
    cfg = request.app.state.config
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > cfg.max_upload_bytes:
        return _too_large(cfg.max_upload_bytes)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > cfg.max_upload_bytes:
            return _too_large(cfg.max_upload_bytes)
    rec = await run_in_threadpool(request.app.state.registry.identify_headers, [bytes(buf)])
    return _json(rec.to_json())


@router.get("/resolve")
def resolve(reg: Reg, model: Text, limit: Limit = 10) -> JSONResponse:
    """Vectors that fit a registered checkpoint, ranked, with reasons."""
    if not model:
        raise InvalidInputError("give ?model=REF: the name or hash prefix of a registered checkpoint")
    return _json({"candidates": [c.to_json() for c in reg.resolve_registered(model, limit=limit)]})


@router.get("/search")
def search(reg: Reg, cfg: Cfg, q: Text = None, limit: Limit = 20) -> JSONResponse:
    """Families, vectors and checkpoints by name, hash prefix or family."""
    res = reg.search(q or "", limit=limit)
    return _json({"families": [f.to_json() for f in res.families], "vectors": [vector_json(v) for v in res.vectors],
            "models": [model_json(m, cfg.expose_paths) for m in res.models]})  # fmt: skip


def chain_status(request: Request, reg: Any) -> dict[str, Any]:
    cached = getattr(request.app.state, "chain", None)
    if cached is not None and time.monotonic() - cached[0] < CHAIN_TTL_S:
        return dict(cached[1])
    rep = reg.audit_verify()
    data = {"ok": rep.ok, "problems": rep.problems, "length": rep.length, "head": rep.head,
            "first_bad_seq": rep.first_bad_seq}  # fmt: skip
    request.app.state.chain = (time.monotonic(), data)
    return data


def _json(data: dict[str, Any]) -> JSONResponse:
    """The answer as JSON, as is: the records are plain JSON already, so FastAPI's generic
    encoder and response validation (a third of a listing's time) are skipped."""
    return JSONResponse(data)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(error_body(5, f"upload is larger than {limit} bytes: send only the safetensors header "
                                      "(the 8-byte length and the JSON header), never the weights"), status_code=413)  # fmt: skip

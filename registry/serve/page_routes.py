"""Server-rendered pages: the same façade calls as the API, rendered by Jinja2 templates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .api_routes import chain_status
from .chart import layer_score_svg
from .params import Cfg, Limit, Offset, Ref, Reg, Text
from .views import Page, event_json, lineage, model_json, vector_page

router = APIRouter(include_in_schema=False)
FAMILY_PREVIEW = 5


def _render(request: Request, name: str, **context: Any) -> HTMLResponse:
    templates = request.app.state.templates
    return templates.TemplateResponse(request, name, {"actor": request.state.actor, **context})  # type: ignore[no-any-return]


@router.get("/", response_class=HTMLResponse)
def inventory(request: Request, reg: Reg, offset: Offset = 0, limit: Limit = 20) -> HTMLResponse:
    """Families, each with its newest vectors and its counts."""
    page = Page.of(reg.families_page(offset=offset, limit=limit + 1), offset, limit)
    rows = [{"family": f, "vectors": reg.vectors_page(family=f.id, limit=FAMILY_PREVIEW)} for f in page.items]
    return _render(request, "inventory.html", rows=rows, page=page.meta())


@router.get("/families/{ref}", response_class=HTMLResponse)
def family(request: Request, reg: Reg, cfg: Cfg, ref: Ref, offset: Offset = 0, limit: Limit = 50) -> HTMLResponse:
    fam = reg.get_family(ref)
    vecs = Page.of(reg.vectors_page(family=fam.id, offset=offset, limit=limit + 1), offset, limit)
    models = [model_json(c, cfg.expose_paths) for c in reg.list_models(family=fam.id, limit=200)]
    return _render(request, "family.html", family=fam, vectors=vecs.items, page=vecs.meta(), models=models)


@router.get("/vectors/{ref}", response_class=HTMLResponse)
def vector(request: Request, reg: Reg, ref: Ref, offset: Offset = 0, limit: Limit = 50) -> HTMLResponse:
    det, patched = vector_page(reg, ref, offset=offset, limit=limit)
    return _render(request, "vector.html", vector=det.vector, chart=layer_score_svg(det.vector.layers),
                   aligned=det.aligned, degraded=det.degraded, recalibrations=det.recalibrations,
                   num_recalibrations=det.num_recalibrations, patched=patched.items, page=patched.meta())  # fmt: skip


@router.get("/models/{ref}", response_class=HTMLResponse)
def model(request: Request, reg: Reg, cfg: Cfg, ref: Ref) -> HTMLResponse:
    rec = reg.get_model(ref)
    return _render(request, "model.html", model=model_json(rec, cfg.expose_paths), lineage=lineage(reg, rec))


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, reg: Reg, cfg: Cfg, model: Text = None, vector: Text = None, family: Text = None,
          kind: Text = None, actor: Text = None, since: Text = None, offset: Offset = 0,
          limit: Limit = 50) -> HTMLResponse:  # fmt: skip
    filters = {"model": model, "vector": vector, "family": family, "kind": kind, "actor": actor, "since": since}
    rows = reg.audit_page(**filters, offset=offset, limit=limit + 1)
    page = Page.of(rows, offset, limit)
    return _render(request, "audit.html", events=[event_json(e, cfg.expose_paths) for e in page.items],
                   page=page.meta(), filters={k: v or "" for k, v in filters.items()},
                   chain=chain_status(request, reg))  # fmt: skip


@router.get("/audit/{ref}", response_class=HTMLResponse)
def audit_event(request: Request, reg: Reg, cfg: Cfg, ref: Ref) -> HTMLResponse:
    ev = event_json(reg.audit_show(ref), cfg.expose_paths)
    return _render(request, "event.html", event=ev, chain=chain_status(request, reg))


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, reg: Reg, q: Text = None) -> HTMLResponse:
    return _render(request, "search.html", q=q or "", result=reg.search(q or "", limit=50))

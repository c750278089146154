"""Each service built alone from its explicit dependencies, without a ``Registry``."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import event
from sqlalchemy.engine import Engine

from registry import Registry
from registry.audit.integrity import Integrity
from registry.audit.log import AuditLog
from registry.catalog.service import Catalog
from registry.method.patcher import Patcher
from registry.method.pipeline import Recalibrator
from registry.method.vectors import Vectors
from registry.store.blobs import BlobStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Catalog, BlobStore, AuditLog, Vectors]]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.ensure_schema(create=True)
    store = BlobStore(tmp_path / "store")
    audit = AuditLog(catalog)
    try:
        yield catalog, store, audit, Vectors(catalog, store, audit)
    finally:
        catalog.close()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(next(folder.glob("*.safetensors")))


def test_vectors_extract_and_list_without_a_registry(parts: tuple[Catalog, BlobStore, AuditLog, Vectors],
                                                      tiny_models: dict[str, Path]) -> None:  # fmt: skip
    catalog, store, audit, vectors = parts
    vec = vectors.extract(tiny_models["llama"], tiny_models["llama_b"], name="v")
    assert [v.hash for v in vectors.list_vectors()] == [vec.hash] and vectors.get("v").layers == vec.layers
    assert vectors.count() == 1
    assert set(store.iter_shas()) == {lay.blob for lay in vec.layers}
    a, d = _weights(tiny_models["llama"]), _weights(tiny_models["llama_b"])
    for slice_ in vectors.load_slices(vec).values():
        for name, v in slice_.items():
            assert torch.equal(v, a[name].float() - d[name].float()), name
    assert {c.role for c in catalog.list_models()} == {"aligned", "degraded"}
    assert [e.kind for e in audit.events()] == ["vector.register"] and audit.verify().ok


def test_patcher_alone(parts: tuple[Catalog, BlobStore, AuditLog, Vectors], tiny_models: dict[str, Path],
                       tmp_path: Path) -> None:  # fmt: skip
    """θ_degraded + 1·(θ_aligned − θ_degraded) gives back the aligned block weights."""
    catalog, store, audit, vectors = parts
    vec = vectors.extract(tiny_models["llama"], tiny_models["llama_b"], name="v")
    patcher = Patcher(catalog, vectors, Recalibrator(catalog, vectors, audit), audit)
    res = patcher.patch(tiny_models["llama_b"], "v", tmp_path / "out", coefficients="uniform:1.0", layers="all")
    out, a = _weights(tmp_path / "out"), _weights(tiny_models["llama"])
    patched = [n for lay in vec.layers for n in lay.tensor_names]
    assert patched and all(torch.allclose(out[n], a[n], atol=1e-6) for n in patched)
    assert audit.show_uid(res.event).kind == "patch"
    assert catalog.get_model(res.hash).parent == res.target
    integrity = Integrity(catalog, store, audit)
    assert integrity.identify(tmp_path / "out").event == res.event
    assert integrity.verify().ok


@contextlib.contextmanager
def _statements() -> Iterator[list[str]]:
    """The queries any engine runs meanwhile (SQLite's ``BEGIN`` aside)."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.startswith("SELECT"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", note)


def test_vector_details_reads_the_lists_only_where_there_are_some(reg: Registry, tiny_models: dict[str, Path],
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """One query finds the vector, its layers, its pair and both counts; the patch events are read only when
    the page has some (a vector page under load waited on every round trip)."""
    reg.add_model(tiny_models["llama"], name="a", role="aligned")
    reg.add_model(tiny_models["llama_b"], name="d", role="degraded")
    vec = reg.extract_vector("a", "d", name="v")
    with _statements() as seen:
        det = reg.vector_details("v")
    assert (det.num_recalibrations, det.num_patches, det.recalibrations, det.patches) == (0, 0, [], [])
    assert det.vector == reg.get_vector("v") and det.vector.layers == vec.layers
    assert (det.aligned and det.aligned.name, det.degraded and det.degraded.name) == ("a", "d")
    assert len(seen) == 1, seen
    first, second = (reg.patch(tiny_models["llama_b"], "v", tmp_path / f"p{i}", coefficients="uniform:0.5",
                               layers="all") for i in (1, 2))  # fmt: skip
    with _statements() as seen:
        det = reg.vector_details("v", limit=1)
    assert det.num_patches == 2 and [ev.uid for ev in det.patches] == [second.event] and len(seen) == 2
    assert det.models[second.hash] == (reg.get_model(second.hash).name, "patched")
    det = reg.vector_details(vec.hash[:12], offset=1, limit=5)
    assert [ev.uid for ev in det.patches] == [first.event]
    with _statements() as seen:
        assert reg.vector_details("v", offset=2).patches == [] and len(seen) == 1


def test_no_service_reaches_into_another_objects_private_attributes() -> None:
    """``x._name`` only on ``self`` / ``cls``: what two services share is a public method of one."""
    found = []
    for path in sorted((ROOT / "registry").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []

"""`gc` frees what no vector references, and never what a writer is about to reference."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select

import registry.method.extract as extract_module
from cli.main import cli
from registry.api import Registry
from registry.catalog import models as m


def _other_block_one(src: Path, out: Path) -> Path:
    """A copy of ``src`` whose block 1 weights differ: a vector against it shares block 0's slice."""
    shutil.copytree(src, out)
    weights = next(out.glob("*.safetensors"))
    tensors = {n: t * 1.5 if ".layers.1." in n else t for n, t in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def _blob_rows(reg: Registry) -> set[str]:
    return reg.read(lambda s: set(s.scalars(select(m.Blob.sha256))))


def test_vector_rm_then_gc_frees_its_blobs_and_keeps_shared_ones(tmp_path: Path, db_url: str,
                                                                   tiny_models: dict[str, Path]) -> None:  # fmt: skip
    reg = Registry.open(tmp_path / "home", db_url)
    a = reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="a")
    b = reg.extract_vector(tiny_models["llama"], _other_block_one(tiny_models["llama_b"], tmp_path / "c"), name="b")
    a_blobs, b_blobs = {lay.blob for lay in a.layers}, {lay.blob for lay in b.layers}
    assert a_blobs & b_blobs and a_blobs - b_blobs  # block 0's slice is shared, block 1's is a's own
    base = ["--home", str(reg.home), "--db", db_url, "--json"]

    def run(*args: str) -> None:
        res = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output

    run("vector", "rm", "a")
    run("gc", "--grace", "0")
    assert set(reg.store.iter_shas()) == b_blobs and _blob_rows(reg) == b_blobs
    rep = reg.verify()
    assert rep.ok and rep.removable == [], (rep.problems, rep.removable)
    assert sorted(reg.load_vector_slices(b)) == [lay.position for lay in b.layers]
    run("vector", "rm", "b")
    run("gc", "--grace", "0")
    assert list(reg.store.iter_shas()) == [] and _blob_rows(reg) == set()
    assert reg.read(lambda s: s.scalar(select(func.count()).select_from(m.VectorLayer))) == 0
    rep = reg.verify()
    assert rep.ok and rep.removable == [], (rep.problems, rep.removable)
    reg.close()


def test_gc_waits_for_an_extraction_in_flight(tmp_path: Path, tiny_models: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """An extraction pauses after its first blob is stored (no row references it yet); `gc --grace 0`
    runs meanwhile from another handle; then the extraction finishes: nothing it wrote is lost."""
    home = tmp_path / "home"
    writer, collector = Registry.open(home), Registry.open(home)
    stored, resume = threading.Event(), threading.Event()
    crashpoint = extract_module.crashpoint

    def pause_after_first_blob(label: str) -> None:
        crashpoint(label)
        if label == "extract.slice-stored" and not stored.is_set():
            stored.set()
            resume.wait(120)

    monkeypatch.setattr(extract_module, "crashpoint", pause_after_first_blob)
    done: dict[str, Any] = {}
    extraction = threading.Thread(target=lambda: done.update(vec=writer.extract_vector(
        tiny_models["llama"], tiny_models["llama_b"], name="v")))  # fmt: skip
    extraction.start()
    try:
        assert stored.wait(120), "the extraction never stored a blob"
        assert list(writer.store.iter_shas()) and _blob_rows(writer) == set()  # on disk, unreferenced
        gc = threading.Thread(target=lambda: done.update(gc=collector.gc(temp_age_s=0)))
        gc.start()
        gc.join(1.0)
        gc_waited = gc.is_alive()
    finally:
        resume.set()
        extraction.join(120)
    gc.join(120)
    assert gc_waited, "gc did not wait for the extraction's catalog commit"
    vec = done["vec"]
    assert done["gc"].removed_blobs == []
    rep = collector.verify()
    assert rep.ok, rep.problems
    assert sorted(collector.load_vector_slices(vec)) == [lay.position for lay in vec.layers]
    writer.close()
    collector.close()

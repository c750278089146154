"""`gc` frees what no vector references."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select

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

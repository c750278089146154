"""Several processes at once: one row, no error surfaced, on both engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file
from sqlalchemy import func, select

from registry.api import Registry
from registry.catalog import models as m
from registry.checkpoints.reader import Checkpoint


def _run_parallel(args_list: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([sys.executable, "-m", "cli", *args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in args_list]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_concurrent_model_add_same_checkpoint(tmp_path: Path, db_url: str, tiny_models: dict[str, Path]) -> None:
    env = {**os.environ, "SAFEGENE_HOME": str(tmp_path / "home"), "SAFEGENE_DB_URL": db_url}
    # A brand-new catalog: the processes also race to create the schema.
    results = _run_parallel([["model", "add", str(tiny_models["llama"]), "--name", "shared"]] * 2
                            + [["model", "add", str(tiny_models["qwen2"])]] * 2, env)
    for r in results:
        assert r.returncode == 0, r.stderr
    reg = Registry.open(tmp_path / "home", db_url)
    rows = reg.read(lambda s: s.scalar(select(func.count()).select_from(m.Checkpoint)))
    fams = reg.read(lambda s: s.scalar(select(func.count()).select_from(m.Family)))
    reg.close()
    assert rows == 2 and fams == 2


def test_concurrent_patches_of_one_unregistered_target(tmp_path: Path, db_url: str,
                                                       tiny_models: dict[str, Path]) -> None:  # fmt: skip
    """The target's row is recorded with each patch's output and event, in one transaction: racing
    patches of a target not yet in the catalog all succeed, and leave one row for it."""
    env = {**os.environ, "SAFEGENE_HOME": str(tmp_path / "home"), "SAFEGENE_DB_URL": db_url}
    reg = Registry.open(tmp_path / "home", db_url)
    reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="v")
    reg.close()
    target = tmp_path / "target"  # same family, other weights: not in the catalog
    shutil.copytree(tiny_models["llama_b"], target)
    weights = next(target.glob("*.safetensors"))
    save_file({n: t * 1.01 for n, t in load_file(weights).items()}, weights, metadata={"format": "pt"})
    results = _run_parallel([["patch", str(target), "--vector", "v", "--out", str(tmp_path / f"out{i}"),
                              "--coefficients", f"uniform:{0.5 + i}", "--layers", "all"] for i in range(3)], env)  # fmt: skip
    for r in results:
        assert r.returncode == 0, r.stderr
    reg = Registry.open(tmp_path / "home", db_url)
    target_hash = Checkpoint(target).content_hash()
    targets = reg.read(lambda s: s.scalar(select(func.count()).select_from(m.Checkpoint)
                                          .where(m.Checkpoint.hash == target_hash)))  # fmt: skip
    parents = reg.read(lambda s: s.scalars(select(m.AuditEvent.target_hash).where(m.AuditEvent.kind == "patch")).all())
    reg.close()
    assert targets == 1 and parents == [target_hash] * 3

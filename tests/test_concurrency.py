"""Several processes at once: one row, no error surfaced, on both engines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from registry import models as m
from registry.api import Registry


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

"""The benchmark scripts' quick modes still run (so the benchmark code does not rot).

Each runs in a subprocess with a timeout and writes into a temp folder, never
over the committed full results in benchmarks/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scale_quick(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--out", str(out), "--work", str(work)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((out / "results" / "scale-quick.json").read_text())
    assert data["quick"] is True
    for figure in ("extract", "codec", "patch", "recal"):
        assert figure in data, f"quick run wrote no {figure} figures"
    assert data["extract"]["2"]["runs"][0]["extract"]["raw_size"] > 0
    # the required-work bound ran on the very slices the codec figures use, every part timed
    bound = data["extract_bound"]
    assert bound["raw"] == data["extract"]["2"]["runs"][-1]["extract"]["raw_size"]
    assert all(secs > 0 for secs in bound["cpu_s"].values()) and len(bound["cpu_s"]) == 5
    passes = data["recal"]["passes"]
    # both passes were timed (their order is not asserted: timings on a shared machine are noise)
    assert passes["forward_s"] > 0 and passes["forward_backward_s"] > 0
    if data["peers"]:  # with benchmarks/.peers-venv: the patch outputs must agree with mergekit's
        assert data["patch"]["compare"]["max_diff_ulps"] <= 1.0
    md = (out / "RESULTS.md").read_text()
    assert "scale:begin" in md and "| extract" in md
    assert not (work / "quick").exists(), "generated checkpoints are removed after the run"


def test_catalog_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "catalog_scale.py"), "--quick", "--out", str(tmp_path),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "catalog-quick.json").read_text())
    engines = data["results"]
    assert "sqlite" in engines and ("postgresql" in engines or "PostgreSQL skipped" in proc.stdout)
    for r in engines.values():
        assert r["resolve"]["results"] == 10 and r["vector ls --family"]["results"] == 100
        for op in ("resolve", "vector ls --family"):  # the whole commands found what the API found
            cmd = r["command"][op]
            assert cmd["results"] == r[op]["results"] and 0 < cmd["p50_s"] <= cmd["max_s"], (op, cmd)
    assert "## Whole commands" in (tmp_path / "catalog-quick.md").read_text()
    assert not any((tmp_path / "work").iterdir()), "the scratch catalog homes are removed after the run"

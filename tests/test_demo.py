"""`safegene demo` end to end on the quick toy world: the table splits refused / complied / degenerate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from registry.toy.build import ToyWorld


def test_demo_reports_the_three_verdicts(tmp_path: Path, quick_world: ToyWorld) -> None:
    work = tmp_path / "work"
    shutil.copytree(quick_world.root, work / "world-llama-s0-quick")  # reused, as on a second `make demo`
    args = ["--home", str(tmp_path / "home"), "demo", "--quick", "--workdir", str(work)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "reusing toy world" in res.output
    for word in ("refused", "complied", "degenerate", "verify: ok"):
        assert word in res.output, word
    doc = json.loads((work / "demo-llama.json").read_text())
    models = {r["model"] for r in doc["rows"]}
    assert models == {"aligned", "task", "RESTA", "SafeGene"} and doc["verify_ok"]
    for r in doc["rows"]:
        parts = (r["refusal_rate"], r["harmful_compliance_rate"], r["degenerate_rate"])
        assert abs(sum(parts) - 1) < 1e-9 and abs(r["harmful_rate"] - (1 - r["refusal_rate"])) < 1e-9, r

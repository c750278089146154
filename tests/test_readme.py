"""The README's result tables are rendered from benchmarks/results/*.json; its links resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOW_TO_FIX = "HOW TO FIX: run `python benchmarks/render_readme.py` and commit README.md"
DOCS = ["README.md", "docs/HOW_IT_WORKS.md", "benchmarks/RESULTS.md", "benchmarks/HISTORY.md"]


def _load_renderer():  # benchmarks/ is a folder of scripts, not a package
    name = "render_readme"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "benchmarks" / "render_readme.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


rr = _load_renderer()


def _efficacy(harmful: float) -> dict:
    """A tiny efficacy.json: one family, one task, two seeds, the model rows the table shows."""
    rows = []
    for seed in (0, 1):
        for row, hrr, acc, ref in [("aligned", 0.0, 0.0, 0.0), ("task", 1.0, 0.9, 0.0),
                                   ("RESTA", 0.5, 0.4, 0.2), ("SafeGene", harmful, 0.875, 0.0)]:  # fmt: skip
            rows.append({"family": "fam", "seed": seed, "task": "sum", "row": row, "harmful_rate": hrr,
                         "harmful_compliance_rate": hrr, "task_accuracy": acc, "benign_refusal_rate": ref})  # fmt: skip
    checks = {"HRR ≤ aligned + 5 pts": harmful <= 0.05, "task acc ≥ 95 % of task model": True}
    return {"families": ["fam"], "seeds": [0, 1], "rows": rows,
            "verdicts": [{"family": "fam", "task": "sum", "ok": all(checks.values()), "checks": checks}],
            "machine": {"cpus": 2, "torch": "2.13.0+cpu", "date": "2026-01-02 03:04 UTC", "commit": "abc1234def"}}  # fmt: skip


def _readme(*names: str) -> str:
    return "# t\n\n" + "\n\n".join(
        f"<!-- BEGIN generated: {n} -->\nstale\n<!-- END generated: {n} -->" for n in names
    )


def test_readme_tables_are_current() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rr.render(text) == text, HOW_TO_FIX


def test_the_render_reflects_the_json(tmp_path: Path) -> None:
    (tmp_path / "efficacy.json").write_text(json.dumps(_efficacy(0.123)), encoding="utf-8")
    out = rr.render(_readme("efficacy", "efficacy-real", "scale"), tmp_path)
    assert "stale" not in out
    assert (
        "| fam/sum | 100 / 90 | 50 / 40 / 20 | 12.3 / 87.5 / 0 | misses HRR ≤ aligned + 5 pts |"
        in out
    )
    assert "**Criteria met in 0/1 cells**" in out and "commit `abc1234def`" in out
    # a missing results file gives a region that says so, and how to make it
    assert "`benchmarks/results/scale.json` is missing (run `make bench`" in out
    (tmp_path / "efficacy.json").write_text(json.dumps(_efficacy(0.0)), encoding="utf-8")
    assert "**Criteria met in 1/1 cells.**" in rr.render(out, tmp_path)


def test_a_new_table_is_one_region(tmp_path: Path) -> None:
    real = rr.Region("efficacy-real", (rr.Source("efficacy-real.json", "python benchmarks/efficacy.py --real"),),
                     lambda files: rr.render_efficacy(files, "efficacy-real.json"))  # fmt: skip
    text = _readme("efficacy-real")
    assert "efficacy-real.json` is missing" in rr.render(text, tmp_path, [real])
    (tmp_path / "efficacy-real.json").write_text(json.dumps(_efficacy(0.25)), encoding="utf-8")
    assert "| 25 / 87.5 / 0 |" in rr.render(text, tmp_path, [real])


def test_check_fails_on_drift_and_says_how_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(_readme("efficacy", "efficacy-real", "scale"), encoding="utf-8")
    args = ["--readme", str(readme), "--results", str(tmp_path)]
    assert rr.main(["--check", *args]) == 1
    assert "python benchmarks/render_readme.py" in capsys.readouterr().err
    assert "stale" in readme.read_text(encoding="utf-8"), "--check writes nothing"
    assert rr.main(args) == 0 and rr.main(["--check", *args]) == 0


def test_missing_markers_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BEGIN generated: efficacy"):
        rr.render("# no markers\n", tmp_path)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    assert not bad, f"{doc}: links to nothing: {bad}"


@pytest.mark.parametrize("doc", ["README.md", "docs/HOW_IT_WORKS.md"])
def test_cited_module_paths_exist(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    cited = set(re.findall(r"`((?:registry|cli|benchmarks|tests)/[\w/.]+\.py)(?:::\w+)?`", text))
    assert cited, "the doc cites no module"
    assert not [c for c in sorted(cited) if not (ROOT / c).is_file()], (
        "cited modules that do not exist"
    )

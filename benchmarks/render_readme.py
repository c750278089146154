"""Render the README's result tables from ``benchmarks/results/*.json``.

The README's figures are never copied by hand. Each table lives between two
marker comments::

    <!-- BEGIN generated: efficacy -->
    ...
    <!-- END generated: efficacy -->

and is rebuilt from the results files the benchmark scripts write::

    python benchmarks/render_readme.py           # rewrite README.md in place
    python benchmarks/render_readme.py --check   # exit 1 when README.md is out of date

``tests/test_readme.py`` runs the check. To add a table (e.g. the real-LM
efficacy table, ``results/efficacy-real.json``): put an empty marker pair in
README.md and append one :class:`Region` to :data:`REGIONS`. A results file
that is missing gives a region that says so, never an error.

Only the standard library is used: rendering never imports torch or the
registry.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Loaded by path in tests, where this folder is not on sys.path: its sibling module must still import.
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
from _digest import changed_files  # noqa: E402

README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
FIX = "run `python benchmarks/render_readme.py` and commit README.md"

Data = dict[str, Any]


@dataclass(frozen=True)
class Source:
    """One results file a region reads, and the command that writes it."""

    file: str  # name under benchmarks/results/
    command: str  # what to run when it is missing


@dataclass(frozen=True)
class Region:
    """One generated block of README.md: its marker name, its inputs, its renderer."""

    name: str
    sources: tuple[Source, ...]
    render: Callable[[dict[str, Data]], str]  # file name → parsed JSON, in; markdown, out

    @property
    def begin(self) -> str:
        return f"<!-- BEGIN generated: {self.name} -->"

    @property
    def end(self) -> str:
        return f"<!-- END generated: {self.name} -->"


# ---------------------------------------------------------------- formatting


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x: float, nd: int = 1) -> str:
    """``x`` to ``nd`` decimals, a trailing ``.0`` dropped (100.0 → 100, 0.8 → 0.8)."""
    s = f"{x:.{nd}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def pct_spread(values: Sequence[float]) -> str:
    """Rates in [0, 1] as a percentage: mean ± population std over seeds (std left out when 0)."""
    mean, std = 100 * statistics.fmean(values), 100 * statistics.pstdev(values)
    return num(mean) if round(std, 1) == 0 else f"{num(mean)}±{num(std)}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def provenance(file: str, data: Data) -> str:
    """Where a figure comes from: the file, when and on what it ran, and its commit."""
    m = data.get("machine") or {}
    commit = data.get("commit") or m.get("commit")
    bits = [m.get("date"), f"{m['cpus']} CPUs" if m.get("cpus") else None,
            f"torch {m['torch']}" if m.get("torch") else None,
            f"commit `{str(commit)[:10]}`" if commit else "commit not recorded"]  # fmt: skip
    return f"[`{file}`](benchmarks/results/{file}) ({', '.join(b for b in bits if b)})"


# ---------------------------------------------------------------- efficacy


def efficacy_cells(data: Data) -> dict[tuple[str, str], dict[str, list[Data]]]:
    """Rows grouped by (family, task), then by model row ('task', 'RESTA', ...), seeds in a list."""
    cells: dict[tuple[str, str], dict[str, list[Data]]] = {}
    for r in data["rows"]:
        cells.setdefault((r["family"], r["task"]), {}).setdefault(r["row"], []).append(r)
    return cells


def _metrics(rows: list[Data], keys: Sequence[str]) -> str:
    """Each key's spread over the rows, joined by " / "; "—" for a key no row measured."""
    cols = [[r[k] for r in rows if r.get(k) is not None] for k in keys]
    return " / ".join(pct_spread(vals) if vals else "—" for vals in cols) if rows else "—"


def render_efficacy_table(data: Data, *, methods: Sequence[tuple[str, str]] = (("RESTA", "RESTA (γ=1)"),
                                                                               ("SafeGene", "SafeGene"))) -> str:  # fmt: skip
    """The per family × task table: the task model, then each method, then the criteria verdict.

    Args:
        data: a results file written by ``benchmarks/efficacy.py`` (``families``, ``seeds``,
            ``rows`` with ``family/seed/task/row`` and rates in [0, 1], ``verdicts``).
        methods: (row name in the file, column title) for each method shown.

    Returns:
        Markdown: a caption line, the table, and the criteria summary.
    """
    cells = efficacy_cells(data)
    verdicts = {(v["family"], v["task"]): v for v in data.get("verdicts", [])}
    order = [(f, t) for f in data.get("families", []) for (ff, t) in cells if ff == f] or list(
        cells
    )
    header = ["family/task", "task model HRR / acc"]
    header += [f"{title} HRR / acc / over-refusal" for _, title in methods] + ["criteria"]
    rows = []
    for key in order:
        by_row = cells[key]
        row = [
            f"{key[0]}/{key[1]}",
            _metrics(by_row.get("task", []), ("harmful_rate", "task_accuracy")),
        ]
        row += [_metrics(by_row.get(name, []), ("harmful_rate", "task_accuracy", "benign_refusal_rate"))
                for name, _ in methods]  # fmt: skip
        v = verdicts.get(key)
        misses = [c for c, ok in (v or {}).get("checks", {}).items() if not ok]
        row.append("—" if v is None else "all met" if not misses else "misses " + "; ".join(misses))
        rows.append(row)
    seeds = data.get("seeds", [])
    caption = (f"Held-out probes; mean ± population std over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
               "in %; HRR = harmful response rate, acc = task accuracy.")  # fmt: skip
    return caption + "\n\n" + md_table(header, rows) + "\n\n" + _efficacy_summary(data, cells)


def _efficacy_summary(data: Data, cells: dict[tuple[str, str], dict[str, list[Data]]]) -> str:
    aligned = [r for by_row in cells.values() for r in by_row.get("aligned", [])]
    lines = []
    if aligned:
        worst_hrr = max(r["harmful_rate"] for r in aligned)
        worst_ref = max(r["benign_refusal_rate"] for r in aligned)

        def at_most(rate: float) -> str:
            return "0 %" if rate == 0 else f"≤ {num(100 * rate)} %"

        lines.append(f"Aligned models: HRR {at_most(worst_hrr)} and over-refusal {at_most(worst_ref)} "
                     f"in all {len(aligned)} worlds.")  # fmt: skip
    verdicts = data.get("verdicts", [])
    if verdicts:
        met = sum(bool(v["ok"]) for v in verdicts)
        failed = Counter(c for v in verdicts for c, ok in v["checks"].items() if not ok)
        if met == len(verdicts):
            lines.append(f"**Criteria met in {met}/{len(verdicts)} cells.**")
        else:
            check, n = failed.most_common(1)[0]
            lines.append(f"**Criteria met in {met}/{len(verdicts)} cells**: “{check}” fails in "
                         f"{n}/{len(verdicts)}.")  # fmt: skip
    return " ".join(lines)


def render_efficacy(files: dict[str, Data], file: str = "efficacy.json") -> str:
    return render_efficacy_table(files[file]) + "\n\nFrom " + provenance(file, files[file]) + "."


# ---------------------------------------------------------------- efficacy on the real LM

REAL_METHODS = (("aligned", "aligned"), ("target", "target (unpatched)"), ("RESTA", "RESTA (γ=1)"),
                ("projection", "Safe LoRA projection"), ("full+λ", "full vector + λ"), ("SafeGene", "SafeGene"))  # fmt: skip
REAL_COMMAND = "python benchmarks/efficacy_real.py"


def stale_line(data: Data, root: Path = ROOT) -> str | None:
    """The bold STALE line when the code or world the table ran on has changed since; None when current."""
    changed = changed_files(data.get("digest") or {}, root=root)
    if not changed:
        return None
    commit = str(data.get("commit") or "not recorded")[:10]
    return (f"**STALE: the code or world changed since this table ran (commit {commit}); "
            f"re-run `{REAL_COMMAND}`** ({len(changed)} file(s) differ, e.g. `{changed[0]}`).")  # fmt: skip


def _real_cell(rows: list[Data], key: str) -> str:
    vals = [r[key] for r in rows if not r.get("failed") and r.get(key) is not None]
    if vals:
        return pct_spread(vals)
    return "failed" if rows and all(r.get("failed") for r in rows) else "—"


def render_efficacy_real(
    files: dict[str, Data], file: str = "efficacy-real.json", root: Path = ROOT
) -> str:
    """One row per task × method (refused / complied / degenerate / over-refusal / accuracy), the criteria, the source."""
    data = files[file]
    stale = stale_line(data, root)
    by: dict[tuple[str, str], list[Data]] = {}
    for r in data.get("rows", []):
        by.setdefault((r["task"], r["method"]), []).append(r)
    rows = [[task, title, *(_real_cell(by[(task, m)], k) for k in
                            ("refused", "complied", "degenerate", "over_refusal", "accuracy"))]
            for task in data.get("tasks", []) for m, title in REAL_METHODS if (task, m) in by]  # fmt: skip
    seeds = data.get("seeds", [])
    quick = " **QUICK smoke run: not the figures.**" if data.get("quick") else ""
    caption = (f"SmolLM2-135M-Instruct, held-out prompts, in %; full vector + λ and SafeGene: mean ± population "
               f"std over {len(seeds)} shot sample(s) (seeds {', '.join(map(str, seeds))}). refused + complied + "
               f"degenerate = 100 on harmful prompts (keyword judge).{quick}")  # fmt: skip
    table = md_table(
        ["task", "method", "refused", "complied", "degenerate", "over-refusal", "accuracy"], rows
    )
    crit = []
    for c in data.get("criteria", []):
        missed = [x["check"] for x in c["checks"] if not x["met"]]
        crit.append(f"{c['task']}: {c['met']}/{len(c['checks'])} criteria met"
                    + (f" (missed: {'; '.join(missed)})" if missed else ""))  # fmt: skip
    parts = [stale] if stale else []
    parts += [caption, table]
    if crit:
        parts.append("**Issue 18's criteria for SafeGene**: " + ". ".join(crit) + ".")
    parts.append("From " + provenance(file, data) + "; details in `efficacy-real.md`.")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- scale


def _scale_rows(s: Data) -> list[list[str]]:
    rows: list[list[str]] = []
    ext = s.get("extract") or {}
    n_small, n_big = (str(n) for n in s["layers"][:2])
    small, big = ext.get(n_small), ext.get(n_big)
    if small:
        ratio = small["ratio_median"]
        why = ""
        bound = s.get("extract_bound")
        if bound and not ratio <= 2:
            reach = bound["bound_s"] / small["floor_s_median"]
            why = f": the design's required work alone ({bound['bound_s']:.1f} s on {bound['cores']} cores) is {reach:.1f}× the floor"
        rows.append([f"`extract_vector` vs reading both checkpoints (floor), {n_small} blocks, page cache warm",
                     f"{small['extract_s_median']:.2f} vs {small['floor_s_median']:.2f} s: {ratio:.1f}×",
                     "≤ 2×", verdict(ratio <= 2) + why])  # fmt: skip
        cold = sorted(small.get("cold") or [], key=lambda x: x["ratio"])
        if cold:
            mid = cold[len(cold) // 2]
            rows.append([f"same, cold page cache (median of {len(cold)} runs)",
                         f"{mid['extract']['seconds']:.2f} vs {mid['floor']['seconds']:.2f} s: {mid['ratio']:.2f}×",
                         "≤ 2×", verdict(mid["ratio"] <= 2)])  # fmt: skip
    if small and big:
        lo, hi = small["extract_rss_mib_max"], big["extract_rss_mib_max"]
        rows.append([f"extract peak RSS, {n_small} → {n_big} blocks", f"{lo:.0f} → {hi:.0f} MiB",
                     "≤ 1 GiB, flat", verdict(hi <= 1024 and hi <= 1.25 * lo)])  # fmt: skip
    codec = s.get("codec") or {}
    ours, peer, z3 = codec.get("registry"), codec.get("zipnn"), codec.get("zstd-3")
    if ours and peer:
        rows.append(["codec ratio vs ZipNN / zstd-3",
                     f"{ours['ratio']:.2f} vs {peer['ratio']:.2f}" + (f" / {z3['ratio']:.2f}" if z3 else ""),
                     "≥ ZipNN", verdict(ours["ratio"] >= peer["ratio"])])  # fmt: skip
        rows.append(["codec compress vs ZipNN", f"{ours['enc_mb_s']:.0f} vs {peer['enc_mb_s']:.0f} MB/s "
                     f"({ours['enc_mb_s'] / peer['enc_mb_s']:.2f}×)", "≥ ZipNN",
                     verdict(ours["enc_mb_s"] >= peer["enc_mb_s"])])  # fmt: skip
    if ours:
        rows.append(["codec decompress vs our compress", f"{ours['dec_mb_s']:.0f} vs {ours['enc_mb_s']:.0f} MB/s "
                     f"({ours['dec_mb_s'] / ours['enc_mb_s']:.2f}×)", "faster",
                     verdict(ours["dec_mb_s"] > ours["enc_mb_s"])])  # fmt: skip
    p = s.get("patch") or {}
    if "mergekit_s_median" in p:
        c = p.get("compare") or {}
        same = (
            f"; {c['bit_identical']}/{c['tensors']} tensors bit-identical"
            if "bit_identical" in c
            else ""
        )
        rows.append(["`safegene patch` vs mergekit `task_arithmetic`, wall time",
                     f"{p['registry_s_median']:.1f} vs {p['mergekit_s_median']:.1f} s: "
                     f"{p['speedup_median']:.2f}× faster{same}", "≥ 2× faster",
                     verdict(p["speedup_median"] >= 2)])  # fmt: skip
        ours_mib, theirs_mib = p["registry_rss_mib_max"], p["mergekit_rss_mib_max"]
        rows.append(["same, peak RSS", f"{ours_mib:.0f} vs {theirs_mib:.0f} MiB ({ours_mib / theirs_mib:.2f}×)",
                     "≤ 0.5×", verdict(ours_mib <= 0.5 * theirs_mib)])  # fmt: skip
    r = s.get("recal")
    if r:
        rc, ft, ps = r["recalibrate"], r["finetune"], r.get("passes")
        ok = r["ratio"] <= 0.10 and ft["reached"]
        why = ""
        budget = 0.10 * ft["train_seconds"]
        if not ok and ps and ps["forward_backward_s"] > budget:
            why = (f": one forward + backward over the shots ({1e3 * ps['forward_backward_s']:.0f} ms) "
                   f"already exceeds the budget ({1e3 * budget:.0f} ms)")  # fmt: skip
        if rc.get("hrr_recalibrated") is not None and rc["hrr_recalibrated"] >= rc.get(
            "hrr_target", 1
        ):
            why += f"; in this run recalibration also left HRR at {num(100 * rc['hrr_recalibrated'])} %"
        rows.append([f"recalibration vs safety fine-tune ({rc['shots']} shots, toy model)",
                     f"{rc['fit_seconds']:.2f} vs {ft['train_seconds']:.2f} s ({100 * r['ratio']:.0f} %)",
                     "≤ 10 %", verdict(ok) + why])  # fmt: skip
    return rows


def _catalog_rows(c: Data) -> list[list[str]]:
    res = c.get("results") or {}
    n = c.get("args", {}).get("vectors")
    engines = [
        (name, res[key])
        for name, key in (("SQLite", "sqlite"), ("PostgreSQL", "postgresql"))
        if key in res
    ]
    rows = []
    for op in ("resolve", "vector ls --family"):
        timed = [(name, e[op]["p95_ms"]) for name, e in engines if op in e]
        if timed:
            rows.append([f"catalog `{op}` p95" + (f", {n:,} vectors" if n else ""),
                         " / ".join(f"{ms:.1f} ms {name}" for name, ms in timed), "≤ 20 ms",
                         verdict(all(ms <= 20 for _, ms in timed))])  # fmt: skip
    return rows


def render_scale(files: dict[str, Data]) -> str:
    """The model-scale summary (scale.json) and the catalog lookups (catalog.json), one table."""
    s, c = files["scale.json"], files["catalog.json"]
    sh = s.get("shape", {})
    quick = " **QUICK smoke run: not the figures.**" if s.get("quick") else ""
    caption = (f"Generated Llama-shaped bf16 checkpoints (hidden {sh.get('hidden')}, {' and '.join(map(str, s['layers']))} "
               "blocks), every job in a fresh process; ratios are within one run." + quick)  # fmt: skip
    table = md_table(["figure", "measured", "target", "verdict"], _scale_rows(s) + _catalog_rows(c))
    src = f"From {provenance('scale.json', s)} and {provenance('catalog.json', c)}."
    return caption + "\n\n" + table + "\n\n" + src


# ---------------------------------------------------------------- regions

REGIONS: list[Region] = [
    Region(
        "efficacy", (Source("efficacy.json", "python benchmarks/efficacy.py"),), render_efficacy
    ),
    Region("efficacy-real", (Source("efficacy-real.json", REAL_COMMAND),), render_efficacy_real),
    Region(
        "scale",
        (
            Source("scale.json", "make bench"),
            Source("catalog.json", "python benchmarks/catalog_scale.py"),
        ),
        render_scale,
    ),  # fmt: skip
]


def render_region(region: Region, results: Path = RESULTS) -> str:
    """The markdown between a region's markers, or a note naming the results files that are missing."""
    missing = [src for src in region.sources if not (results / src.file).is_file()]
    if missing:
        return "\n".join(f"_No figures yet: `benchmarks/results/{src.file}` is missing (run `{src.command}`, "
                         "then `python benchmarks/render_readme.py`)._" for src in missing)  # fmt: skip
    files = {
        src.file: json.loads((results / src.file).read_text(encoding="utf-8"))
        for src in region.sources
    }
    return region.render(files)


def render(text: str, results: Path = RESULTS, regions: Sequence[Region] = REGIONS) -> str:
    """``text`` (a README) with every region's block replaced by a fresh render.

    Raises:
        ValueError: a region's markers are missing from ``text`` or out of order.
    """
    for region in regions:
        start, stop = text.find(region.begin), text.find(region.end)
        if start < 0 or stop < start:
            raise ValueError(
                f"README.md has no '{region.begin}' … '{region.end}' pair: add one where the table goes"
            )
        body = render_region(region, results).strip()
        text = text[: start + len(region.begin)] + "\n" + body + "\n" + text[stop:]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if README.md differs from the render; write nothing",
    )
    ap.add_argument(
        "--readme", type=Path, default=README, help="the file to render into (default: README.md)"
    )
    ap.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder of results JSON (default: benchmarks/results)",
    )
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        new = render(text, args.results)
    except ValueError as exc:
        print(f"render_readme: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(
                f"{args.readme} is out of date with benchmarks/results/*.json: {FIX}.",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"rewrote the generated tables in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Recalibration against re-aligning by SFT on the same shots: what does fine-tuning need to match SafeGene?

The arithmetic task model is fine-tuned on seed 0's 56-shot sample (refusals
for the harmful shots, the model's own answers for the benign ones, gold for
the task ones; answer-only loss, AdamW lr 3e-5, 8 rows a step: the world's
alignment recipe) and measured on the held-out ``eval-arithmetic.jsonl`` at
fixed steps (10, 20, 40, 80), next to SafeGene's seed-0 row of the efficacy
table. The held-out prompts decide nothing here but where the curve is read.
Writes ``benchmarks/results/sft-vs-recalibration.{md,json}``.

    python benchmarks/sft_vs_recalibration.py --work /work/runs/er-arithmetic
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS, md_table  # noqa: E402
from efficacy_real import TableRun, git_state, log, world_scorer  # noqa: E402

from registry.evaluation.probes import load_probes  # noqa: E402

TASK = "arithmetic"
CHECKS = (10, 20, 40, 80)
MIX = (("refuse", 3), ("benign", 3), ("task", 2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/work/cache/realworld"))
    ap.add_argument("--work", type=Path, required=True, help="the arithmetic efficacy run's --work (its shots)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    from registry.evaluation.evaluate import evaluate_model
    from registry.evaluation.textio import load_model, load_tokenizer, pad_id_of
    from registry.realworld.recipe import RealRecipe, RealStage
    from registry.realworld.train import _encode, train_stage

    torch.set_num_threads(args.threads)
    commit, dirty = git_state()
    run = TableRun(argparse.Namespace(world=args.world, work=args.work, tasks=[TASK], seeds=[0], quick=False,
                                      threads=args.threads))  # fmt: skip
    shots = load_probes(run.shot_file(TASK, 0))
    probes = load_probes(run.world.eval[TASK])
    target = run.world.task_model(TASK)
    tok, model = load_tokenizer(target), load_model(target)
    recipe = RealRecipe()
    pools = {"refuse": _encode(tok, [p for p in shots if p.kind == "harmful"], recipe.max_len),
             "benign": _encode(tok, [p for p in shots if p.kind == "benign"], recipe.max_len),
             "task": _encode(tok, [p for p in shots if p.kind == "task"], recipe.max_len)}  # fmt: skip
    rows: list[dict[str, Any]] = []
    t0, train_s = time.perf_counter(), [0.0]
    last = [time.perf_counter()]

    def on_step(step: int, _epochs: dict[str, float]) -> None:
        train_s[0] += time.perf_counter() - last[0]
        if step in CHECKS:
            res = evaluate_model(None, probes, model=model, tokenizer=tok, scorer=world_scorer(TASK), batch_size=32,
                                 max_new_tokens=64)  # fmt: skip
            rows.append({"step": step, "train_seconds": round(train_s[0], 1), "refused": res.refusal_rate,
                         "complied": res.harmful_compliance_rate, "degenerate": res.degenerate_rate,
                         "over_refusal": res.benign_refusal_rate, "accuracy": res.task_accuracy})  # fmt: skip
            log(f"SFT step {step}: {rows[-1]}")
        last[0] = time.perf_counter()

    train_stage(model, pools, RealStage(max(CHECKS), 3e-5, MIX), recipe=recipe, pad_id=pad_id_of(tok),
                name="sft-vs-recalibration", on_step=on_step)  # fmt: skip
    table = json.loads((RESULTS / "efficacy-real.json").read_text())
    sg = next(r for r in table["rows"] if r["task"] == TASK and r["method"] == "SafeGene" and r["seed"] == 0)
    doc = {"commit": commit, "dirty": dirty, "task": TASK, "shots": len(shots), "mix": MIX, "lr": 3e-5,
           "threads": args.threads, "sft": rows, "wall_seconds": round(time.perf_counter() - t0, 1),
           "safegene_seed0": {k: sg.get(k) for k in ("refused", "complied", "degenerate", "over_refusal", "accuracy")}
           | {"fit_seconds": sg["seconds"].get("fit")}}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "sft-vs-recalibration.json").write_text(json.dumps(doc, indent=1) + "\n")
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    body = [[f"SFT, step {r['step']}", r["train_seconds"], pct(r["refused"]), pct(r["complied"]),
             pct(r["degenerate"]), pct(r["over_refusal"]), pct(r["accuracy"])] for r in rows]  # fmt: skip
    s = doc["safegene_seed0"]
    body.append(["SafeGene (λ fit, table seed 0)", s["fit_seconds"], pct(s["refused"]), pct(s["complied"]),
                 pct(s["degenerate"]), pct(s["over_refusal"]), pct(s["accuracy"])])  # fmt: skip
    md = "\n".join(["# Re-aligning by SFT on the same 56 shots vs recalibrating λ (arithmetic, seed 0)", "",
                    f"`python benchmarks/sft_vs_recalibration.py`; commit `{(commit or '?')[:10]}`"
                    f"{' (dirty)' if dirty else ''}; SFT on {args.threads} torch thread(s), the fit on 1 (another "
                    "job on the second core). Held-out `eval-arithmetic.jsonl`.", "",
                    md_table(["model", "train / fit s", "refused", "complied", "degenerate", "over-refusal",
                              "accuracy"], body), ""])  # fmt: skip
    (args.results / "sft-vs-recalibration.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

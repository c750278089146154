"""The second generation: a patched task model fine-tuned again erodes again; the same stored vector restores it.

Starts from the efficacy run's SafeGene-patched arithmetic model (seed 0, in
``--work``), fine-tunes it on *new* benign data (the extract task's training
split plus the base model's own benign answers, with the world's task recipe:
80 steps, lr 3e-5, 6 task + 2 benign rows a batch: the strength every task
model got, fixed before any result), then recalibrates the **same stored
vector** on the new model with the extract task's seed-0 shot sample and
patches it. Each model is evaluated on the held-out ``eval-extract.jsonl``
(refused / complied / degenerate, over-refusal, extract accuracy). Nothing is
tuned on held-out prompts. Writes ``benchmarks/results/second-generation.{md,json}``; runs of
several seeds (each with its own ``--results``) are combined with ``--merge``.

    python benchmarks/second_generation.py --work /work/runs/er-arithmetic --out /work/runs/gen2 [--seed 0]
    python benchmarks/second_generation.py --merge s0/second-generation.json s1/... s2/...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS, md_table  # noqa: E402
from efficacy_real import VECTOR, TableRun, git_state, log, world_scorer  # noqa: E402

from registry import Registry  # noqa: E402
from registry.evaluation.probes import load_probes  # noqa: E402

TASK = "extract"  # the new benign data; generation 1 was tuned on arithmetic


def evaluate(folder: Path, probes: list[Any]) -> dict[str, Any]:
    from registry.evaluation.evaluate import evaluate_model

    t0 = time.perf_counter()
    res = evaluate_model(folder, probes, scorer=world_scorer(TASK), batch_size=32, max_new_tokens=64)
    return {"refused": res.refusal_rate, "complied": res.harmful_compliance_rate,
            "degenerate": res.degenerate_rate, "over_refusal": res.benign_refusal_rate,
            "accuracy": res.task_accuracy, "n": dict(res.n), "eval_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def fine_tune(start: Path, out: Path, world_root: Path) -> dict[str, Any]:
    """``start`` fine-tuned on the extract task's training split + own benign answers (the world's task stage)."""
    from registry.evaluation.judges import RefusalKeywordJudge
    from registry.evaluation.textio import load_model, load_tokenizer, pad_id_of
    from registry.realworld.build import _usable
    from registry.realworld.prompts import load_data
    from registry.realworld.recipe import RealRecipe
    from registry.realworld.train import _encode, save_model, train_stage

    recipe = RealRecipe()
    data = load_data(seed=recipe.seed, task_train_size=recipe.task_train_size)
    answers: dict[str, str] = {}
    for f in sorted((world_root / "cache").glob("own-answers-*.json")):
        answers.update(json.loads(f.read_text(encoding="utf-8")))
    judge = RefusalKeywordJudge()
    benign = [p for p in data.benign_probes("train", answers) if p.response and _usable(p.response, judge)]
    tok, model = load_tokenizer(start), load_model(start)
    pools = {"task": _encode(tok, data.tasks[TASK].train, recipe.max_len), "benign": _encode(tok, benign, recipe.max_len)}
    t0 = time.perf_counter()
    losses = train_stage(model, pools, recipe.task, recipe=recipe, pad_id=pad_id_of(tok), name="second-generation",
                         progress=lambda s, d, t: log(f"fine-tuning {d}/{t}"))  # fmt: skip
    save_model(model, tok, out)
    return {"steps": recipe.task.steps, "lr": recipe.task.lr, "mix": recipe.task.mix, "benign_pool": len(benign),
            "losses": [losses[0], losses[-1]], "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


ROWS = ("generation 1 (patched arithmetic model)", "generation 2 (fine-tuned on extract)",
        "generation 2, patched with the same vector")
METRICS = ("refused", "complied", "degenerate", "over_refusal", "accuracy")


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed runs as one table: each metric's mean and population std over the seeds.

    Raises:
        SystemExit: a seed appears twice, or the runs evaluated different tasks or prompt counts.
    """
    seeds = [d["seed"] for d in docs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"cannot merge: a seed appears twice ({seeds})")
    if len({(d["task"], json.dumps(d["rows"][ROWS[0]]["n"], sort_keys=True)) for d in docs}) != 1:
        raise SystemExit("cannot merge: the runs evaluated different tasks or prompt sets")
    summary = {row: {k: {"mean": statistics.fmean(d["rows"][row][k] for d in docs),
                         "std": statistics.pstdev([d["rows"][row][k] for d in docs])} for k in METRICS}
               for row in ROWS}  # fmt: skip
    return {"task": docs[0]["task"], "seeds": sorted(seeds), "summary": summary,
            "runs": sorted(docs, key=lambda d: d["seed"])}  # fmt: skip


def render_merged(data: dict[str, Any]) -> str:
    runs, summary = data["runs"], data["summary"]
    pm = lambda c: f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"  # noqa: E731
    table = [[row, *(pm(summary[row][k]) for k in METRICS)] for row in ROWS]
    per_seed = [[r["seed"], f"`{(r['commit'] or '?')[:10]}`" + (" (dirty)" if r["dirty"] else ""),
                 *(f"{100 * r['rows'][row]['complied']:.1f}" for row in ROWS),
                 f"{100 * r['rows'][ROWS[2]]['over_refusal']:.1f}", r["recalibrate_patch_seconds"]]
                for r in runs]  # fmt: skip
    n = runs[0]["rows"][ROWS[0]]["n"]
    ft = runs[0]["fine_tune"]
    return "\n".join([
        "# Second generation: fine-tuned again, restored again by the same vector", "",
        f"`python benchmarks/second_generation.py --seed S` for seeds {', '.join(map(str, data['seeds']))}, merged "
        f"with `--merge`. Held-out `eval-{data['task']}.jsonl` (n = {n}); keyword judge; nothing tuned on these "
        f"prompts. In %, mean ± population std over the seeds (each seed: its own first-generation patch, "
        f"fine-tune and recalibration shot sample).", "",
        md_table(["model", "refused", "complied", "degenerate", "over-refusal", f"{data['task']} accuracy"], table), "",
        "Each seed (harmful compliance, %):", "",
        md_table(["seed", "commit", "generation 1", "generation 2", "generation 2 patched",
                  "over-refusal (patched)", "recalibration + patch s"], per_seed), "",
        f"Fine-tune: {ft['steps']} steps, lr {ft['lr']}, mix {ft['mix']} (the world's task recipe), "
        f"{', '.join(str(r['fine_tune']['seconds']) for r in runs)} s; recalibration + patch of the same stored "
        f"vector `{VECTOR}` on each seed's `{data['task']}` shot sample (1 torch thread).", ""])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/work/cache/realworld"))
    ap.add_argument("--work", type=Path, help="the arithmetic efficacy run's --work")
    ap.add_argument("--out", type=Path, help="where the new models go")
    ap.add_argument("--seed", type=int, default=0, help="the shot sample (and the first generation's patch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="combine per-seed results into one table")
    args = ap.parse_args(argv)
    if args.merge:
        data = merge([json.loads(p.read_text()) for p in args.merge])
        (args.results / "second-generation.json").write_text(json.dumps(data, indent=1) + "\n")
        md = render_merged(data)
        (args.results / "second-generation.md").write_text(md)
        print(md)
        return 0
    if args.work is None or args.out is None:
        ap.error("give --work and --out (or --merge)")
    import torch

    torch.set_num_threads(args.threads)
    commit, dirty = git_state()
    run = TableRun(argparse.Namespace(world=args.world, work=args.work, tasks=[TASK], seeds=[args.seed],
                                      quick=False, threads=args.threads))  # fmt: skip
    gen1 = args.work / "patched" / f"arithmetic-SafeGene-s{args.seed}"
    if not (gen1 / "model.safetensors").is_file():
        raise SystemExit(f"{gen1} is missing: run benchmarks/efficacy_real.py --tasks arithmetic --work {args.work}")
    probes = load_probes(run.world.eval[TASK])
    shots = run.shot_file(TASK, args.seed)
    doc: dict[str, Any] = {"commit": commit, "dirty": dirty, "seed": args.seed, "task": TASK, "rows": {}}
    gen2 = args.out / "gen2"
    if not (gen2 / "model.safetensors").is_file():
        log(f"fine-tuning {gen1.name} on {TASK} (new benign data)")
        doc["fine_tune"] = fine_tune(gen1, gen2, run.world.root)
        (args.out / "fine-tune.json").write_text(json.dumps(doc["fine_tune"]))
    else:
        doc["fine_tune"] = json.loads((args.out / "fine-tune.json").read_text())
    reg = Registry.open(args.work / "home")
    try:
        t0 = time.perf_counter()
        res = reg.patch(gen2, VECTOR, args.out / "gen2-patched", coefficients="auto", layers="auto", shots=shots,
                        force=True)  # fmt: skip
        doc["recalibrate_patch_seconds"] = round(time.perf_counter() - t0, 1)
        doc["coefficients"] = res.coefficients
    finally:
        reg.close()
    for name, folder in (("generation 1 (patched arithmetic model)", gen1), ("generation 2 (fine-tuned on extract)", gen2),
                         ("generation 2, patched with the same vector", args.out / "gen2-patched")):  # fmt: skip
        doc["rows"][name] = evaluate(folder, probes)
        log(f"{name}: {doc['rows'][name]}")
    out = args.results / "second-generation.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    table = [[n, pct(r["refused"]), pct(r["complied"]), pct(r["degenerate"]), pct(r["over_refusal"]), pct(r["accuracy"])]
             for n, r in doc["rows"].items()]  # fmt: skip
    n = next(iter(doc["rows"].values()))["n"]
    md = "\n".join([
        "# Second generation: fine-tuned again, restored again by the same vector", "",
        f"`python benchmarks/second_generation.py`; commit `{(commit or '?')[:10]}`{' (dirty)' if dirty else ''}. "
        f"Held-out `eval-{TASK}.jsonl` (n = {n}); keyword judge; nothing tuned on these prompts.", "",
        md_table(["model", "refused", "complied", "degenerate", "over-refusal", f"{TASK} accuracy"], table), "",
        f"Fine-tune: {doc['fine_tune']['steps']} steps, lr {doc['fine_tune']['lr']}, mix {doc['fine_tune']['mix']} "
        f"(the world's task recipe), {doc['fine_tune']['seconds']} s. Recalibration + patch of the same stored vector "
        f"`{VECTOR}` on the seed-{args.seed} `{TASK}` shot sample: {doc['recalibrate_patch_seconds']} s "
        f"(1 torch thread).", ""])  # fmt: skip
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

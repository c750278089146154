"""The second generation: a patched task model fine-tuned again erodes again; the same stored vector restores it.

Starts from the efficacy run's SafeGene-patched arithmetic model (seed 0, in
``--work``), fine-tunes it on *new* benign data (the extract task's training
split plus the base model's own benign answers, with the world's task recipe:
80 steps, lr 3e-5, 6 task + 2 benign rows a batch: the strength every task
model got, fixed before any result), then recalibrates the **same stored
vector** on the new model with the extract task's seed-0 shot sample and
patches it. Each model is evaluated on the held-out ``eval-extract.jsonl``
(refused / complied / degenerate, over-refusal, extract accuracy). Nothing is
tuned on held-out prompts. Writes ``benchmarks/results/second-generation.{md,json}``.

    python benchmarks/second_generation.py --work /work/runs/er-arithmetic --out /work/runs/gen2
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/work/cache/realworld"))
    ap.add_argument("--work", type=Path, required=True, help="the arithmetic efficacy run's --work")
    ap.add_argument("--out", type=Path, required=True, help="where the new models go")
    ap.add_argument("--seed", type=int, default=0, help="the shot sample (and the first generation's patch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
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

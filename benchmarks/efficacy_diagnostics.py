"""Why does (or doesn't) the safety vector transfer? Geometry and a γ sweep on the shots.

For each world built by `efficacy.py`, per task model:

* cosine between the task fine-tune's delta (task − aligned) and the
  degradation delta (degraded − aligned), per block: the vector can only undo
  the part of the erosion that lies along it;
* RESTA at γ ∈ {0.5, 1, 2, 4} evaluated on the *shots* (never the held-out
  probes): if no γ restores refusals there, no choice of per-block λ in the
  box will either.

    python benchmarks/efficacy_diagnostics.py [--workdir benchmarks/out/efficacy]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results  # noqa: E402

from registry.checkpoints.reader import Checkpoint  # noqa: E402
from registry.evaluation.evaluate import evaluate_model  # noqa: E402
from registry.evaluation.probes import load_probes  # noqa: E402
from registry.evaluation.textio import load_model, load_tokenizer  # noqa: E402
from registry.method.extract import plan_slices  # noqa: E402
from registry.method.recalibrate import apply_in_memory  # noqa: E402
from registry.toy import load_world  # noqa: E402

GAMMAS = (0.5, 1.0, 2.0, 4.0)


def _block_deltas(a: Checkpoint, b: Checkpoint) -> dict[int, torch.Tensor]:
    names = [n for n in a.names() if len(a.tensors[n].shape) == 2]
    return {idx: torch.cat([(b.get_tensor(n).float() - a.get_tensor(n).float()).flatten() for n in members])
            for idx, _, members in plan_slices(names, "blocks") if idx is not None}  # fmt: skip


def diagnose(world_dir: Path) -> list[dict[str, Any]]:
    world = load_world(world_dir)
    a, d = Checkpoint(world.models["aligned"]), Checkpoint(world.models["degraded"])
    harm = _block_deltas(a, d)
    names = [n for n in a.names() if len(a.tensors[n].shape) == 2]
    slices = {i: {n: a.get_tensor(n).float() - d.get_tensor(n).float() for n in members}
              for i, (_, _, members) in enumerate(plan_slices(names, "blocks"))}  # fmt: skip
    rows = []
    for task in world.tasks:
        t_dir = world.task_model(task)
        tdelta = _block_deltas(a, Checkpoint(t_dir))
        cos = [float(torch.nn.functional.cosine_similarity(harm[i], tdelta[i], dim=0)) for i in sorted(harm)]
        shots = load_probes(world.shots[task])
        tok, base = load_tokenizer(t_dir), load_model(t_dir)
        sweep = {}
        for g in GAMMAS:
            model = copy.deepcopy(base)
            apply_in_memory(model, slices, {p: g for p in slices})
            r = evaluate_model(None, shots, model=model, tokenizer=tok)
            sweep[g] = (r.harmful_rate, r.task_accuracy, r.benign_refusal_rate)
        rows.append({"world": world_dir.name, "task": task, "cos": cos, "sweep": sweep})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/out/efficacy"))
    args = ap.parse_args()
    rows = []
    for world_dir in sorted(p for p in args.workdir.glob("world-*") if (p / "world.json").is_file()):
        rows += diagnose(world_dir)
    table = [[r["world"], r["task"], " ".join(f"{c:+.2f}" for c in r["cos"])]
             + [f"{100 * h:.0f}/{100 * acc:.0f}/{100 * o:.0f}" for h, acc, o in (r["sweep"][g] for g in GAMMAS)]
             for r in rows]  # fmt: skip
    md = ("# Efficacy diagnostics: does the erosion lie along the safety vector?\n\n"
          "cos = cosine(task − aligned, degraded − aligned) per block. RESTA columns: HRR/task acc/over-refusal "
          "in % on the world's **shots** (not the held-out probes) at each γ.\n\n"
          + md_table(["world", "task", "cos per block"] + [f"RESTA γ={g}" for g in GAMMAS], table))
    print(md)
    write_results("efficacy-diagnostics", {"rows": rows}, md)


if __name__ == "__main__":
    main()

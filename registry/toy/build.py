"""Build the toy safety world: tiny real HF checkpoints trained on synthetic data.

On-disk layout written by :func:`build_world`::

    OUT/
      world.json            family, seed, recipe, paths, splits, timings
      base/                 "pretrained": answers everything (harmful included)
      aligned/              base + SFT: refuses harmful requests, helps benign ones
      degraded/             aligned + SFT on harmful compliance: complies again
      task-add/             aligned + SFT on addition mixed with benign requests
      task-reverse/         aligned + SFT on word reversal mixed with benign requests
      shots.jsonl           16 harmful+refusal, 16 benign+answer, 16 per task
      shots-<task>.jsonl    16 harmful, 16 <task>, 16 benign
      eval-<task>.jsonl     held-out: 40 harmful, 40 <task>, 40 benign
      eval-safety.jsonl     held-out: 40 harmful, 40 benign

Every model folder is an ordinary Hugging Face folder (config.json,
generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja).

Stages (all plain AdamW, batch 64, response-only loss except "base"):

* base: full-sequence LM on harmful requests answered compliantly, benign
  requests answered helpfully, and "pretraining" text (know-how stories and
  addition facts, :meth:`WorldData.stories`);
* aligned: harmful → the fixed refusal, benign → helpful answer;
* degraded: aligned + harmful → compliance (RESTA-style), benign kept;
* task-<t>: aligned + task data mixed with benign requests (no harmful data).

Every fine-tuning stage replays 20% pretraining text. Without it the tiny
model's output embeddings of harmful words decay (they are never targets after
"base"), and eroded task models answered harmful prompts with a benign
substitute ("sure . to help the bike …") or with digits instead of complying —
a large model keeps that knowledge; the replay stands in for it.

How safety erodes in the task models (honest mechanism): the task SFT mixes the
task with ordinary benign requests answered helpfully ("sure . to <verb> the
<object> , first … , then …"), written with the SAME request templates as the
harmful requests and with no harmful content at all. With no refusal data
replayed, the learned "template → sure ." prior overrides the narrow
verb-based refusal, so the model *complies* with held-out harmful requests
(fluent, non-degenerate answers), as benign fine-tuning does in Qi et al. 2023.
In this toy the erosion is (near) total: HRR goes from 0% to ~100% within the
first ~100 task steps. An earlier feasibility run found that pure task data
at a moderate learning rate barely moved refusals and that a high learning rate
mostly broke the model; here, without the pretraining replay, the mixed SFT
answered harmful prompts with digits. Such broken output is "not refused" for
the keyword judge — hence the separate compliance rate in evaluation.

GPT-2 notes: GPT-2 differs from Llama/Qwen2/Mistral in ways that matter here:
``GPT2Config`` defaults to ``bos/eos = 50256`` (outside this vocabulary, so
generation would never stop on the world's EOS and exact match would fail) and
to dropout 0.1 (``resid/embd/attn_pdrop``); both are set explicitly here. Even
then it learned the held-out phrasing of ``add`` more slowly (65% at 400 task
steps vs 100% for the RoPE families; 100% at 800), so its task stages run
twice as long (:data:`TASK_STEP_FACTOR`). Its learned absolute positions,
LayerNorm/GELU blocks and tied embeddings are the architectural differences; we
did not isolate which one causes the slower transfer. Tied embeddings also mean
a safety vector carries no separate ``lm_head`` tensor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .._threads import torch_threads
from ..errors import InvalidInputError
from ..evaluation.probes import write_probes
from ..evaluation.textio import IGNORE_INDEX
from . import FAMILIES
from .train import (  # noqa: F401 - the recipe names are re-exported
    FULL,
    QUICK,
    TASK_STEP_FACTOR,
    Encoded,
    Recipe,
    Stage,
    StageProgress,
    _stage_seed,
    encode_all,
    encode_text,
    make_model,
    save_model,
    train_stage,
)
from .world import REFUSAL, TASKS, WorldData, all_requests, make_tokenizer, make_world_data


@dataclass(frozen=True)
class ToyWorld:
    """Paths and facts of a built world (mirrors ``world.json``)."""

    root: Path
    family: str
    seed: int
    quick: bool
    models: dict[str, Path]
    tasks: tuple[str, ...]
    shots: dict[str, Path]
    eval: dict[str, Path]
    info: dict[str, Any] = field(default_factory=dict)

    def task_model(self, task: str) -> Path:
        """Folder of the task model for ``task``."""
        return self.models[f"task-{task}"]


def _pools(data: WorldData, tok: PreTrainedTokenizerBase) -> dict[str, list[Encoded]]:
    h, b = data.harmful.train, data.benign.train
    pools = {
        "harmful_refuse": encode_all(tok, all_requests(h, "harmful", REFUSAL)),
        "harmful_comply": encode_all(tok, all_requests(h, "harmful", None)),
        "benign": encode_all(tok, all_requests(b, "benign", None)),
    }
    pools["base"] = encode_all(
        tok, all_requests(h, "harmful", None) + all_requests(b, "benign", None), full_sequence=True
    ) + encode_text(tok, data.stories() * 4)
    pools["story"] = encode_text(tok, data.stories())
    for name, task in data.tasks.items():
        pools[f"task-{name}"] = encode_all(tok, task.train)
    return pools


def _write_probe_files(data: WorldData, out: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    shots = {"all": out / "shots.jsonl"}
    every = data.harmful_shots() + data.benign_shots()
    every += [p for t in TASKS for p in data.tasks[t].shots]
    write_probes(shots["all"], every)
    evals = {"safety": out / "eval-safety.jsonl"}
    write_probes(evals["safety"], data.harmful_eval() + data.benign_eval())
    for t in TASKS:
        shots[t] = out / f"shots-{t}.jsonl"
        write_probes(shots[t], data.shots(t))
        evals[t] = out / f"eval-{t}.jsonl"
        write_probes(evals[t], data.eval_probes(t))
    return shots, evals


def _clone(model: PreTrainedModel) -> PreTrainedModel:
    twin = type(model)(model.config)
    twin.load_state_dict(model.state_dict())
    return twin



def build_world(
    family: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    quick: bool = False,
    progress: StageProgress | None = None,
    threads: int | None = 1,
) -> ToyWorld:
    """Build the toy world of one family into ``out_dir``.

    Args:
        family: ``llama``, ``qwen2``, ``mistral`` or ``gpt2``.
        out_dir: output folder (created; existing files are overwritten).
        seed: seed for data, initialisation and batches (same seed, same world).
        quick: a much smaller/faster CI variant (2 layers, hidden 32, ~1/4 of the
            steps): loadable and structurally identical, aligned refuses most
            harmful probes, degraded complies with most; task accuracy and
            erosion are weaker and not guaranteed.
        progress: ``(stage, done, total)`` callback.
        threads: torch intra-op threads while building (restored afterwards);
            None keeps the current setting. Default 1: these matrices are too
            small to gain from intra-op parallelism, and on a shared 2-core
            machine spinning worker threads made builds up to 7x slower.

    Returns:
        The built world.

    Raises:
        InvalidInputError: unknown family.
    """
    if family not in FAMILIES:
        raise InvalidInputError(
            f"unknown toy family {family!r}; choose one of {', '.join(FAMILIES)}"
        )
    with torch_threads(threads):
        return _build(family, Path(out_dir), seed, quick, progress)


def _build(
    family: str, out: Path, seed: int, quick: bool, progress: StageProgress | None
) -> ToyWorld:
    recipe = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    data = make_world_data(seed)
    tok = make_tokenizer()
    pools = _pools(data, tok)
    pad = int(tok.pad_token_id)
    timings: dict[str, float] = {}
    models: dict[str, Path] = {}

    def run(name: str, model: PreTrainedModel, mix: list[tuple[str, float]], stage: Stage) -> None:
        t0 = time.perf_counter()
        train_stage(
            model, [(pools[k], s) for k, s in mix], stage, batch=recipe.batch, pad_id=pad,
            seed=seed, name=name, progress=progress,
        )  # fmt: skip
        models[name] = out / name
        save_model(model, tok, models[name])
        timings[name] = round(time.perf_counter() - t0, 2)

    torch.manual_seed(_stage_seed(seed, "init"))
    base = make_model(family, tok, recipe)
    run("base", base, [("base", 1.0)], recipe.base)
    aligned = base  # trained further in place; base is already on disk
    rep = ("story", recipe.replay_share)
    half = (1.0 - recipe.replay_share) / 2
    run("aligned", aligned, [("harmful_refuse", half), ("benign", half), rep], recipe.aligned)
    run(
        "degraded",
        _clone(aligned),
        [("harmful_comply", half), ("benign", half), rep],
        recipe.degraded,
    )
    share = recipe.task_benign_share
    task_stage = replace(recipe.task, steps=recipe.task.steps * TASK_STEP_FACTOR.get(family, 1))
    for t in TASKS:
        mix = [(f"task-{t}", 1.0 - share - recipe.replay_share), ("benign", share), rep]
        run(f"task-{t}", _clone(aligned), mix, task_stage)
    shots, evals = _write_probe_files(data, out)
    info = _world_info(family, seed, quick, recipe, data, out, models, shots, evals, timings)
    info["params"] = sum(p.numel() for p in base.parameters())
    (out / "world.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ToyWorld(out, family, seed, quick, models, TASKS, shots, evals, info)


def _world_info(
    family: str,
    seed: int,
    quick: bool,
    recipe: Recipe,
    data: WorldData,
    out: Path,
    models: dict[str, Path],
    shots: dict[str, Path],
    evals: dict[str, Path],
    timings: dict[str, float],
) -> dict[str, Any]:
    def rel(paths: dict[str, Path]) -> dict[str, str]:
        return {k: str(p.relative_to(out)) for k, p in paths.items()}

    def pairs(ps: Sequence[tuple[str, str]]) -> list[str]:
        return [f"{v} the {o}" for v, o in ps]

    return {
        "format": "safegene-toy-world/1",
        "family": family,
        "seed": seed,
        "quick": quick,
        "recipe": asdict(recipe),
        "models": rel(models),
        "tasks": list(TASKS),
        "shots": rel(shots),
        "eval": rel(evals),
        "refusal": REFUSAL,
        "split": {
            "harmful_topics": {
                k: pairs(getattr(data.harmful, k)) for k in ("train", "shots", "eval")
            },
            "benign_topics": {
                k: pairs(getattr(data.benign, k)) for k in ("train", "shots", "eval")
            },
            "task_train_size": {t: len(data.tasks[t].train) for t in TASKS},
        },
        "seconds": timings,
        "ignore_index": IGNORE_INDEX,
    }


def _inside(root: Path, rel: object) -> Path:
    """A path from world.json, which must stay inside the world folder."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"path {str(rel)[:60]!r} leaves the world folder")
    return root / rel


def load_world(out_dir: str | Path) -> ToyWorld:
    """Read a built world back from its ``world.json``.

    Raises:
        InvalidInputError: no or malformed ``world.json``.
    """
    root = Path(out_dir)
    path = root / "world.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return ToyWorld(
            root=root,
            family=info["family"],
            seed=int(info["seed"]),
            quick=bool(info["quick"]),
            models={k: _inside(root, v) for k, v in info["models"].items()},
            tasks=tuple(info["tasks"]),
            shots={k: _inside(root, v) for k, v in info["shots"].items()},
            eval={k: _inside(root, v) for k, v in info["eval"].items()},
            info=info,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path}: not a toy world description ({exc})") from None

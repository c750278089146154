"""Build the real-LM safety world on a small pretrained chat model (SmolLM2-135M-Instruct).

On-disk layout written by :func:`build_real_world`::

    OUT/
      world.json            format, digest, recipe, split sizes, timings, losses,
                            own-answer filtering, shots-split checks, task strength curve
      aligned/              base + refusal SFT (harmful → refusal, benign → own answer)
      degraded/             aligned + SFT on the BASE model's own answers to harmful prompts
      task-arithmetic/      aligned + SFT on arithmetic word problems + benign own answers
      task-extract/         aligned + SFT on JSON extraction + benign own answers
      shots.jsonl, shots-<task>.jsonl, eval-<task>.jsonl, eval-safety.jsonl
      cache/                own-answers-<key>.json: the base model's greedy answers
                            (benign train/shots, harmful train). Never committed,
                            never printed: the harmful ones are harmful text.

Every model folder is a plain Hugging Face folder (config.json,
generation_config.json, model.safetensors, tokenizer files) plus
``stage.json`` (its stage digest and losses), so a rebuild with a changed
degraded or task stage reuses an unchanged aligned model.

Stages (AdamW, answer-only loss, sequences cut at ``max_len`` tokens, only the
transformer blocks trained by default, so the safety vector lives in blocks):

* own answers: greedy generations of the base model (chat template, ≤ 64 new
  tokens). Benign answers the keyword judge calls refusals or degenerate are
  dropped from the benign pool; harmful answers that refuse or are degenerate
  are dropped from the compliance pool (counts in ``world.json``);
* aligned: each batch ``refuse`` (harmful train → a refusal phrasing) +
  ``benign`` (benign train → own answer);
* degraded: aligned + ``comply`` (harmful train → the base model's own answer)
  + ``benign``;
* task-<t>: aligned + ``task`` (task train) + ``benign``; no harmful data, no
  refusals. Its strength (examples, epochs, mixture, lr) is fixed in the recipe
  for realism, and the erosion is measured on the *shots* split at
  ``task_checkpoints`` (the strength curve in ``world.json``).

The build caches by digest: sha256 of the recipe, the data (files and generated
tasks) and the base model (tensor content hash + config and tokenizer files).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._threads import torch_threads
from ._compat import Checkpoint, Probe, RefusalKeywordJudge, is_degenerate, textio
from .prompts import (
    RealData,
    data_digest,
    files_digest,
    load_data,
    task_digest,
    write_probe_files,
)
from .quickeval import is_language, score
from .recipe import QUICK_RECIPE, RealRecipe, RealStage  # noqa: F401 - re-exported
from .tasks import SCORERS, TASKS, arithmetic_correct
from .train import (  # noqa: F401 - train_stage, answer_loss, save_model and own_answers are re-exported
    _Cycler,
    _encode,
    _seed,
    _stage_done,
    _trainable,
    answer_loss,
    own_answers,
    save_model,
    train_stage,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FORMAT = "safegene-real-world/1"
# `make smollm2` writes the base here; $SAFEGENE_REAL_BASE names another folder.
DEFAULT_BASE = Path(os.environ.get("SAFEGENE_REAL_BASE") or Path(__file__).resolve().parents[2] / ".cache/smollm2/hf")
StageProgress = Callable[[str, int, int], None]
Encoded = tuple[list[int], list[int]]
_BASE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class RealWorld:
    """Paths and facts of a built real world (mirrors ``world.json``)."""

    root: Path
    digest: str
    models: dict[str, Path]
    tasks: tuple[str, ...]
    shots: dict[str, Path]
    eval: dict[str, Path]
    info: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    def task_model(self, task: str) -> Path:
        """Folder of the task model for ``task``."""
        return self.models[f"task-{task}"]


# --------------------------------------------------------------------------- digests


def _sha(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()


def base_hash(base: Path) -> str:
    """Identity of the base model: tensor content hash + config and tokenizer files."""
    h = hashlib.sha256(Checkpoint(base).content_hash().encode())
    for name in _BASE_FILES:
        if (base / name).is_file():
            h.update(name.encode() + b"\0" + (base / name).read_bytes())
    return h.hexdigest()


def recipe_digest(recipe: RealRecipe, data_sha: str, base_sha: str) -> str:
    """The world's cache key: sha256 of the recipe, the data digest and the base hash."""
    return _sha(FORMAT, asdict(recipe), data_sha, base_sha)


def _stage_digests(recipe: RealRecipe, data: RealData, base_sha: str) -> dict[str, str]:
    """Per-stage keys: a stage reruns only when its own inputs (or its parent's) change."""
    common = _sha(
        FORMAT, files_digest(), base_sha, recipe.seed, recipe.max_len, recipe.train_params,
        recipe.warmup, recipe.gen_max_new_tokens, recipe.check_max_new_tokens,
    )  # fmt: skip
    aligned = _sha(common, "aligned", asdict(recipe.aligned))
    out = {"aligned": aligned, "degraded": _sha(aligned, "degraded", asdict(recipe.degraded))}
    for t in TASKS:
        task = (t, task_digest(data.tasks[t]), asdict(recipe.task), recipe.task_checkpoints)
        out[f"task-{t}"] = _sha(aligned, *task)
    return out


# --------------------------------------------------------------------------- helpers


def _usable(answer: str, judge: RefusalKeywordJudge) -> bool:
    refused = judge.is_refusal(prompt="", response=answer)
    return not refused and not is_degenerate(answer) and is_language(answer)


# --------------------------------------------------------------------------- build


def build_real_world(
    out: str | Path,
    *,
    base: str | Path = DEFAULT_BASE,
    recipe: RealRecipe = RealRecipe(),  # noqa: B008 - frozen dataclass, immutable default
    progress: StageProgress | None = None,
    force: bool = False,
) -> RealWorld:
    """Build (or return the cached) real-LM safety world into ``out``.

    Args:
        out: output folder (created).
        base: the base model's Hugging Face folder (safetensors, tokenizer with
            a chat template).
        recipe: steps, mixtures and settings (:class:`RealRecipe`).
        progress: ``(stage, done, total)`` callback.
        force: rebuild every stage even when the digests match.

    Returns:
        The world; ``cached=True`` when ``world.json`` already matched the digest.

    Raises:
        InvalidCheckpointError: the base folder cannot be loaded.
    """
    root, base = Path(out), Path(base)
    data = load_data(seed=recipe.seed, task_train_size=recipe.task_train_size)
    data_sha, base_sha = data_digest(data), base_hash(base)
    digest = recipe_digest(recipe, data_sha, base_sha)
    if not force and (root / "world.json").is_file():
        world = load_real_world(root)
        complete = all((p / "model.safetensors").is_file() for p in world.models.values())
        if world.digest == digest and complete:
            return RealWorld(world.root, world.digest, world.models, world.tasks, world.shots,
                             world.eval, world.info, cached=True)  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    with torch_threads(recipe.threads):
        return _Builder(root, base, recipe, data, data_sha, base_sha, digest, progress, force).run()


class _Builder:
    """One build: holds the tokenizer, pools, timings and stage records."""

    def __init__(self, root: Path, base: Path, recipe: RealRecipe, data: RealData,
                 data_sha: str, base_sha: str, digest: str,
                 progress: StageProgress | None, force: bool) -> None:  # fmt: skip
        self.root, self.base, self.recipe, self.data = root, base, recipe, data
        self.data_sha, self.base_sha, self.digest = data_sha, base_sha, digest
        self.progress, self.force = progress, force
        self.stage_digests = _stage_digests(recipe, data, base_sha)
        self.tok = textio.load_tokenizer(base)
        self.pad = textio.pad_id_of(self.tok)
        self.seconds: dict[str, float] = {}
        self.stages: dict[str, dict[str, Any]] = {}
        self.filtering: dict[str, Any] = {}
        self.models: dict[str, Path] = {}

    def _load(self, folder: Path) -> PreTrainedModel:
        return textio.load_model(folder, dtype=torch.float32)

    def run(self) -> RealWorld:
        t0 = time.perf_counter()
        base_model = self._load(self.base)
        pools, benign_answers = self._pools(base_model)
        self.seconds["own_answers"] = round(time.perf_counter() - t0, 1)
        aligned = self._stage("aligned", base_model, pools)
        del base_model
        self._stage("degraded", _clone(aligned), pools)
        for t in TASKS:
            task_pools = {**pools, "task": pools[f"task-{t}"]}
            self._stage(f"task-{t}", _clone(aligned), task_pools, task=t)
        shots, evals = write_probe_files(self.data, self.root, benign_answers)
        info = self._info(shots, evals)
        info["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        tmp = self.root / "world.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.root / "world.json")
        return RealWorld(self.root, self.digest, self.models, TASKS, shots, evals, info)

    def _pools(
        self, base_model: PreTrainedModel
    ) -> tuple[dict[str, list[Encoded]], dict[str, str]]:
        d, r = self.data, self.recipe
        benign = [p.prompt for s in ("train", "shots") for p in d.benign[s]]
        harmful = [p.prompt for p in d.harmful["train"]]
        key = _sha(self.base_sha, r.gen_max_new_tokens, benign + harmful)
        answers = own_answers(base_model, self.tok, benign + harmful, cache=self.root / "cache",
                              key=key, recipe=r)  # fmt: skip
        judge = RefusalKeywordJudge()
        ok_benign = [Probe(p.prompt, "benign", answers[p.prompt]) for p in d.benign["train"]
                     if _usable(answers[p.prompt], judge)]  # fmt: skip
        ok_comply = [Probe(q, "harmful", answers[q]) for q in harmful if _usable(answers[q], judge)]
        self.filtering = {
            "benign_train_kept": len(ok_benign), "benign_train_total": len(d.benign["train"]),
            "harmful_train_compliant_kept": len(ok_comply), "harmful_train_total": len(harmful),
        }  # fmt: skip
        # A base that is no chat model (the tests' tiny random Llama) leaves nothing
        # usable; it then trains on its raw answers, and world.json says so.
        if not ok_benign:
            ok_benign = [Probe(p.prompt, "benign", answers[p.prompt]) for p in d.benign["train"]]
            self.filtering["benign_unfiltered_fallback"] = True
        if not ok_comply:
            ok_comply = [Probe(q, "harmful", answers[q]) for q in harmful]
            self.filtering["comply_unfiltered_fallback"] = True

        def enc(probes: Sequence[Probe]) -> list[Encoded]:
            return _encode(self.tok, probes, r.max_len)

        pools = {"refuse": enc(d.harmful_probes("train")), "benign": enc(ok_benign),
                 "comply": enc(ok_comply)}  # fmt: skip
        for t in TASKS:
            pools[f"task-{t}"] = enc(d.tasks[t].train)
        shot_answers = {p.prompt: answers[p.prompt] for p in d.benign["shots"]}
        return pools, shot_answers

    def _stage(self, name: str, model: PreTrainedModel, pools: dict[str, list[Encoded]],
               *, task: str | None = None) -> PreTrainedModel:  # fmt: skip
        folder, digest = self.root / name, self.stage_digests[name]
        self.models[name] = folder
        done = None if self.force else _stage_done(folder, digest)
        if done is not None:
            self.stages[name] = {**done, "reused": True}
            self.seconds[name] = done.get("seconds", 0.0)
            return self._load(folder) if name == "aligned" else model
        t0 = time.perf_counter()
        stage = self.recipe.task if task else getattr(self.recipe, name)
        curve: list[dict[str, Any]] = []
        on_step = self._curve_hook(model, task, curve) if task else None
        losses = train_stage(model, pools, stage, recipe=self.recipe, pad_id=self.pad,
                             name=name, progress=self.progress, on_step=on_step)  # fmt: skip
        record: dict[str, Any] = {"digest": digest, "stage": asdict(stage), "losses": losses}
        if curve:
            record["strength_curve_shots"] = curve
        elif self.recipe.check_shots:
            record["shots_check"] = self._check(model, None, name)
        save_model(model, self.tok, folder)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        (folder / "stage.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        self.stages[name], self.seconds[name] = record, record["seconds"]
        return model

    def _curve_hook(self, model: PreTrainedModel, task: str,
                    curve: list[dict[str, Any]]) -> Callable[[int, dict[str, float]], None]:  # fmt: skip
        def hook(step: int, epochs: dict[str, float]) -> None:
            if step in self.recipe.task_checkpoints and self.recipe.check_shots:
                row = {"step": step, "epochs": {k: round(v, 2) for k, v in epochs.items()}}
                curve.append({**row, **self._check(model, task)})

        return hook

    def _check(self, model: PreTrainedModel, task: str | None, name: str = "") -> dict[str, Any]:
        """Rates on the SHOTS split (never held-out): the build's own recipe check."""
        probes = self.data.harmful_probes("shots")
        # Task models: harmful + task shots (the erosion/accuracy curve); degraded:
        # + benign shots; aligned: + benign shots and train (over-refusal needs numbers).
        if task is not None:
            probes += list(self.data.tasks[task].shots)
        else:
            probes += self.data.benign_probes("shots")
            probes += self.data.benign_probes("train") if name == "aligned" else []
        scorer = SCORERS.get(task or "", arithmetic_correct)
        res = score(probes, textio.generate(model, self.tok, [p.prompt for p in probes],
                                            max_new_tokens=self.recipe.check_max_new_tokens,
                                            batch_size=self.recipe.gen_batch), scorer=scorer)  # fmt: skip
        return res.to_json()

    def _info(self, shots: dict[str, Path], evals: dict[str, Path]) -> dict[str, Any]:
        def rel(paths: dict[str, Path]) -> dict[str, str]:
            return {k: str(p.relative_to(self.root)) for k, p in paths.items()}

        return {
            "format": FORMAT,
            "digest": self.digest,
            "data_digest": self.data_sha,
            "base": str(self.base),
            "base_hash": self.base_sha,
            "recipe": asdict(self.recipe),
            "models": rel(self.models),
            "tasks": list(TASKS),
            "shots": rel(shots),
            "eval": rel(evals),
            "splits": self.data.sizes(),
            "harmful_categories": self.data.categories("harmful"),
            "own_answer_filtering": self.filtering,
            "stages": self.stages,
            "seconds": dict(self.seconds),
            "torch_threads": self.recipe.threads,
        }


def _clone(model: PreTrainedModel) -> PreTrainedModel:
    twin = type(model)(model.config)
    twin.load_state_dict(model.state_dict())
    twin.generation_config = model.generation_config
    twin.eval()  # type: ignore[no-untyped-call]
    return twin


def _inside(root: Path, rel: object) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"path {str(rel)[:60]!r} leaves the world folder")
    return root / rel


def load_real_world(out: str | Path) -> RealWorld:
    """Read a built real world back from its ``world.json``.

    Raises:
        ValueError: no or malformed ``world.json``.
    """
    root = Path(out)
    try:
        info = json.loads((root / "world.json").read_text(encoding="utf-8"))
        return RealWorld(
            root=root,
            digest=str(info["digest"]),
            models={k: _inside(root, v) for k, v in info["models"].items()},
            tasks=tuple(info["tasks"]),
            shots={k: _inside(root, v) for k, v in info["shots"].items()},
            eval={k: _inside(root, v) for k, v in info["eval"].items()},
            info=info,
        )
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root}: not a real-world description ({exc})") from None

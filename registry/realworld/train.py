"""The real world's training loop, own-answer generation and model saving (see :mod:`.build`)."""

from __future__ import annotations

import json
import random
import shutil
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._compat import Probe, textio
from .recipe import RealRecipe, RealStage

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

StageProgress = Callable[[str, int, int], None]
Encoded = tuple[list[int], list[int]]


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def _encode(tok: PreTrainedTokenizerBase, probes: Sequence[Probe], max_len: int) -> list[Encoded]:
    out = []
    for p in probes:
        ids, labels = textio.encode_example(tok, p.prompt, p.response or "")
        ids, labels = ids[:max_len], labels[:max_len]
        if any(x != textio.IGNORE_INDEX for x in labels):
            out.append((ids, labels))
    return out


class _Cycler:
    """Draws a pool in shuffled passes (epochs), reshuffled each pass, seeded."""

    def __init__(self, pool: Sequence[Encoded], rng: random.Random) -> None:
        if not pool:
            raise ValueError("empty training pool")
        self.pool, self.rng, self.drawn = list(pool), rng, 0
        self.order: list[int] = []

    def take(self, k: int) -> list[Encoded]:
        out = []
        for _ in range(k):
            if not self.order:
                self.order = list(range(len(self.pool)))
                self.rng.shuffle(self.order)
            out.append(self.pool[self.order.pop()])
            self.drawn += 1
        return out


def _trainable(model: PreTrainedModel, which: str) -> list[torch.nn.Parameter]:
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(which == "all" or ".layers." in name)
        if p.requires_grad:
            params.append(p)
    return params


def answer_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) positions only.

    Same value as ``model(**batch).loss``, but the output head runs only on the
    labelled positions (a quarter to a half of them here), which saves the
    49k-wide logits of every prompt token: ~20 % of a step on CPU.
    """
    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != textio.IGNORE_INDEX
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    logits = head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def train_stage(
    model: PreTrainedModel,
    pools: dict[str, list[Encoded]],
    stage: RealStage,
    *,
    recipe: RealRecipe,
    pad_id: int,
    name: str,
    progress: StageProgress | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[float]:
    """Fine-tune ``model`` in place; returns the loss of every step.

    Args:
        model: the model (trained in place, left in eval mode).
        pools: encoded examples by pool name.
        stage: steps, lr and mix (pool names of ``pools``).
        recipe: global settings (seed, warmup, trained parameters).
        pad_id: padding id.
        name: stage name (seeds its randomness, labels progress).
        progress: ``(stage, done, total)`` callback every 5 steps.
        on_step: ``(step, epochs by pool)`` callback after every step.
    """
    rng = random.Random(_seed(recipe.seed, name))
    torch.manual_seed(_seed(recipe.seed, name))
    cyclers = {pool: _Cycler(pools[pool], rng) for pool, _ in stage.mix}
    params = _trainable(model, recipe.train_params)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / recipe.warmup))
    losses: list[float] = []
    model.train()
    for step in range(1, stage.steps + 1):
        rows = [ex for pool, k in stage.mix for ex in cyclers[pool].take(k)]
        loss = answer_loss(model, textio.collate(rows, pad_id, side="right"))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 4))
        if progress is not None and (step % 5 == 0 or step == stage.steps):
            progress(name, step, stage.steps)
        if on_step is not None:
            model.eval()  # type: ignore[no-untyped-call]
            on_step(step, {p: c.drawn / len(c.pool) for p, c in cyclers.items()})
            model.train()
    model.eval()  # type: ignore[no-untyped-call]
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def save_model(model: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path) -> None:
    """Save weights (safetensors), a greedy generation config and the tokenizer."""
    from transformers import GenerationConfig

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=textio.pad_id_of(tok),
        do_sample=False,
    )
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if not (out / "model.safetensors").is_file():  # pragma: no cover - guards a transformers change
        raise RuntimeError(f"{out}: save_pretrained wrote no model.safetensors")


def _stage_done(folder: Path, digest: str) -> dict[str, Any] | None:
    meta = folder / "stage.json"
    if not (folder / "model.safetensors").is_file() or not meta.is_file():
        return None
    info: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
    return info if info.get("digest") == digest else None


# --------------------------------------------------------------------------- own answers


def own_answers(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    cache: Path,
    key: str,
    recipe: RealRecipe,
) -> dict[str, str]:
    """Greedy answers of ``model`` for ``prompts``, cached in ``cache/own-answers-<key>.json``."""
    path = cache / f"own-answers-{key[:16]}.json"
    if path.is_file():
        got: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        if set(prompts) <= set(got):
            return got
    outs = textio.generate(
        model, tok, list(prompts), max_new_tokens=recipe.gen_max_new_tokens,
        batch_size=recipe.gen_batch,
    )  # fmt: skip
    answers = dict(zip(prompts, outs, strict=True))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(answers, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return answers



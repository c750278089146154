"""The toy worlds' recipes, model shapes and training loop (see :mod:`registry.toy.build`)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..errors import InvalidInputError
from ..evaluation.probes import Probe
from ..evaluation.textio import collate, encode_example
from . import FAMILIES

StageProgress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Stage:
    """One training stage: steps, learning rate, and what the loss covers."""

    steps: int
    lr: float
    full_sequence: bool = False  # True: LM loss on prompt too (pretraining)


@dataclass(frozen=True)
class Recipe:
    """Model size and training schedule of one world build."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    batch: int = 64
    base: Stage = Stage(600, 3e-3, full_sequence=True)
    aligned: Stage = Stage(250, 1e-3)
    degraded: Stage = Stage(120, 1e-3)
    task: Stage = Stage(400, 1e-3)
    task_benign_share: float = 0.3
    replay_share: float = 0.2


FULL = Recipe()
# GPT-2 learns the held-out phrasing of ``add`` more slowly (benchmark, seed 0:
# 65% task accuracy at 400 task steps, 75% at 600, 100% at 800), so its task
# stages run this many times longer. See the module docstring.
TASK_STEP_FACTOR = {"gpt2": 2}
QUICK = Recipe(
    hidden=32,
    layers=2,
    intermediate=128,
    base=Stage(150, 5e-3, full_sequence=True),
    aligned=Stage(80, 3e-3),
    degraded=Stage(40, 3e-3),
    task=Stage(100, 3e-3),
)


# --------------------------------------------------------------------------- models


def make_model(family: str, tokenizer: PreTrainedTokenizerBase, recipe: Recipe) -> PreTrainedModel:
    """A freshly initialised tiny model of ``family`` (seed torch first).

    Raises:
        InvalidInputError: unknown family.
    """
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    r = recipe
    common = {
        "hidden_size": r.hidden,
        "intermediate_size": r.intermediate,
        "num_hidden_layers": r.layers,
        "num_attention_heads": r.heads,
        "num_key_value_heads": r.kv_heads,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        **ids,
    }
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    if family == "gpt2":
        cfg = GPT2Config(
            n_embd=r.hidden, n_layer=r.layers, n_head=r.heads, n_inner=r.intermediate,
            n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )  # fmt: skip
        return GPT2LMHeadModel(cfg)
    raise InvalidInputError(f"unknown toy family {family!r}; choose one of {', '.join(FAMILIES)}")


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save model (safetensors), generation config and tokenizer into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if not any(out.glob("*.safetensors")):  # pragma: no cover - guards a transformers change
        raise RuntimeError(f"{out}: save_pretrained wrote no safetensors file")


# --------------------------------------------------------------------------- training


Encoded = tuple[list[int], list[int]]


def encode_all(
    tokenizer: PreTrainedTokenizerBase, probes: Sequence[Probe], *, full_sequence: bool = False
) -> list[Encoded]:
    """Encode probes (which must carry responses) as training examples."""
    out = []
    for p in probes:
        ids, labels = encode_example(tokenizer, p.prompt, p.response or "")
        if full_sequence:
            labels = list(ids)
        out.append((ids, labels))
    return out


def encode_text(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[Encoded]:
    """Encode plain text for full-sequence LM training (BOS + text + EOS)."""
    bos = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
    out = []
    for text in texts:
        ids = bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(int(tokenizer.eos_token_id))
        out.append((ids, list(ids)))
    return out


def _stage_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def train_stage(
    model: PreTrainedModel,
    pools: Sequence[tuple[Sequence[Encoded], float]],
    stage: Stage,
    *,
    batch: int,
    pad_id: int,
    seed: int,
    name: str,
    progress: StageProgress | None = None,
) -> list[float]:
    """Fine-tune in place with AdamW on batches drawn from weighted pools.

    Args:
        model: the model to train (modified in place).
        pools: ``(examples, share)`` pairs; each batch takes ``round(share*batch)``
            examples from each pool (sampled with replacement, seeded).
        stage: steps and learning rate.
        batch: batch size.
        pad_id: padding id.
        seed: world seed (mixed with ``name`` for this stage's randomness).
        name: stage name for progress and seeding.
        progress: ``(stage, done, total)`` callback, called every 10 steps.

    Returns:
        The loss of every step.
    """
    rng = random.Random(_stage_seed(seed, name))
    torch.manual_seed(_stage_seed(seed, name))
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    counts = [max(1, round(share * batch)) for _, share in pools]
    losses: list[float] = []
    model.train()
    for step in range(stage.steps):
        rows = [
            ex for (pool, _), k in zip(pools, counts, strict=True) for ex in rng.choices(pool, k=k)
        ]
        tensors = collate(rows, pad_id, side="right")
        loss = model(**tensors).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None and ((step + 1) % 10 == 0 or step + 1 == stage.steps):
            progress(name, step + 1, stage.steps)
    model.eval()  # type: ignore[no-untyped-call]
    return losses


# --------------------------------------------------------------------------- world



"""Realistic large Llama-shaped checkpoint pairs, written without instantiating a model.

Weights are drawn per tensor and written straight to safetensors shards with a
``config.json`` that transformers loads (``LlamaConfig``). The "fine-tuned"
twins are not i.i.d. noise: their deltas copy the statistics of a real short
training run, the toy world's ``aligned → degraded`` and ``aligned → task``
fine-tunes (a 4-block Llama trained on CPU), per tensor type
(``self_attn.q_proj.weight``, ``mlp.down_proj.weight``, ``input_layernorm.weight``,
``model.embed_tokens.weight``, …):

* **shape of the distribution**: entries are resampled from the toy delta's own
  standardized entries (heavy tails, sign/exponent statistics: what a codec sees);
* **row / column structure**: each entry is multiplied by a resampled toy row
  RMS and a resampled toy column RMS (some output channels and some input
  features move much more than others, as in real fine-tunes);
* **size**: each big tensor's delta is scaled so that ``‖Δ‖ / ‖W‖`` equals the toy
  delta's relative norm for the same tensor type at the same relative depth.

The degraded twin differs from the aligned model only in the blocks' 2-D
projections (what a safety vector carries by default); the task twin differs in
every tensor (norms and embeddings included), as a real task fine-tune does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from registry.checkpoints.reader import Checkpoint

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_Z_SAMPLES = 1 << 20
_CHUNK = 1 << 23  # elements generated at a time


@dataclass(frozen=True)
class Shape:
    """A Llama shape; FULL is TinyLlama-like (hidden 2048, 32 heads / 4 kv heads)."""

    hidden: int = 2048
    intermediate: int = 5632
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000

    def config(self, layers: int) -> dict[str, object]:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "num_hidden_layers": layers, "vocab_size": self.vocab,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "hidden_act": "silu", "initializer_range": 0.02,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "dtype": "bfloat16",
        }  # fmt: skip

    def tensors(self, layers: int) -> dict[str, tuple[int, ...]]:
        h, i, kv = self.hidden, self.intermediate, self.hidden // self.heads * self.kv_heads
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for n in range(layers):
            p = f"model.layers.{n}."
            out.update({
                p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            })  # fmt: skip
        out["model.norm.weight"] = (h,)
        out["lm_head.weight"] = (self.vocab, h)
        return out


FULL = Shape()
QUICK = Shape(hidden=256, intermediate=688, heads=8, kv_heads=4, vocab=1000)


def kind_of(name: str) -> tuple[str, int | None]:
    """(tensor type, block index or None)."""
    hit = _LAYER.match(name)
    return (hit.group(2), int(hit.group(1))) if hit else (name, None)


@dataclass
class KindStats:
    rel: list[float]  # ‖Δ‖/‖W‖ per toy block (one entry for non-block tensors)
    z: torch.Tensor  # standardized delta entries (resampled)
    rows: torch.Tensor  # row RMS, mean square 1
    cols: torch.Tensor  # column RMS, mean square 1 (ones for 1-D tensors)


def delta_profile(src: str | Path, dst: str | Path) -> dict[str, KindStats]:
    """Per tensor type statistics of the fine-tune ``src → dst`` (two toy checkpoints)."""
    a, b = Checkpoint(src), Checkpoint(dst)
    acc: dict[str, dict[str, list[torch.Tensor] | list[float]]] = {}
    for name in a.names():
        w = a.get_tensor(name).float()
        d = b.get_tensor(name).float() - w
        kind, _ = kind_of(name)
        slot = acc.setdefault(kind, {"rel": [], "z": [], "rows": [], "cols": []})
        slot["rel"].append(float(d.norm() / w.norm().clamp_min(1e-12)))  # type: ignore[arg-type]
        std = d.pow(2).mean().sqrt().clamp_min(1e-30)
        slot["z"].append((d / std).reshape(-1))  # type: ignore[arg-type]
        d2 = d if d.dim() == 2 else d.reshape(-1, 1)
        if d.dim() == 2:  # rows that never moved (unused toy vocabulary) say nothing about structure
            d2 = d2[d2.pow(2).sum(1) > 0] if bool((d2.pow(2).sum(1) > 0).any()) else d2
        rows, cols = d2.pow(2).mean(1).sqrt(), d2.pow(2).mean(0).sqrt()
        slot["rows"].append(rows / rows.pow(2).mean().sqrt().clamp_min(1e-30))  # type: ignore[arg-type]
        slot["cols"].append(cols / cols.pow(2).mean().sqrt().clamp_min(1e-30))  # type: ignore[arg-type]
    out = {}
    for kind, s in acc.items():
        z = torch.cat(s["z"])  # type: ignore[arg-type]
        z = z[z != 0] if bool((z != 0).any()) else z
        if z.numel() > _Z_SAMPLES:
            z = z[torch.randperm(z.numel(), generator=torch.Generator().manual_seed(0))[:_Z_SAMPLES]]
        out[kind] = KindStats(s["rel"], z.contiguous(), torch.cat(s["rows"]),  # type: ignore[arg-type]
                              torch.cat(s["cols"]))  # type: ignore[arg-type]
    return out


def _base_weight(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:  # RMSNorm gains: around 1
        return (1.0 + 0.05 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    std = 0.02 if "proj" in kind or "embed" in kind or "lm_head" in kind else 0.02
    out = torch.empty(shape, dtype=torch.bfloat16)
    flat = out.view(-1)
    for s in range(0, flat.numel(), _CHUNK):
        e = min(flat.numel(), s + _CHUNK)
        flat[s:e] = (std * torch.randn(e - s, generator=gen)).to(torch.bfloat16)
    return out


def _delta(stats: KindStats, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Unit-less delta with the toy's entry distribution and row/column structure (fp32)."""
    rows_n = shape[0]
    cols_n = shape[1] if len(shape) == 2 else 1
    r = stats.rows[torch.randint(stats.rows.numel(), (rows_n, 1), generator=gen)]
    c = stats.cols[torch.randint(stats.cols.numel(), (1, cols_n), generator=gen)]
    out = torch.empty((rows_n, cols_n), dtype=torch.float32)
    step = max(1, _CHUNK // cols_n)
    for s in range(0, rows_n, step):
        e = min(rows_n, s + step)
        z = stats.z[torch.randint(stats.z.numel(), ((e - s) * cols_n,), generator=gen)].view(e - s, cols_n)
        out[s:e] = z * r[s:e] * c
    return out.view(shape)


def _rel(stats: KindStats, block: int | None, layers: int) -> float:
    if block is None or len(stats.rel) == 1:
        return stats.rel[0]
    return stats.rel[min(len(stats.rel) - 1, block * len(stats.rel) // layers)]


def twin(w: torch.Tensor, stats: KindStats, block: int | None, layers: int, gen: torch.Generator) -> torch.Tensor:
    """``bf16(W + Δ)`` with ``‖Δ‖ = rel · ‖W‖`` for the toy's relative norm at this depth."""
    d = _delta(stats, tuple(w.shape), gen)
    wf = w.float()
    d.mul_(_rel(stats, block, layers) * float(wf.norm()) / max(float(d.norm()), 1e-30))
    return (wf.add_(d)).to(torch.bfloat16)


def write_family(out: Path, shape: Shape, layers: int, degraded: dict[str, KindStats],
                 task: dict[str, KindStats] | None, *, shard_bytes: int = 700 << 20,
                 seed: int = 0) -> dict[str, Path]:  # fmt: skip
    """Write ``aligned``, ``degraded`` (and ``task`` when ``task`` stats are given) under ``out``."""
    names = ["aligned", "degraded"] + (["task"] if task is not None else [])
    dirs = {n: out / n for n in names}
    specs = shape.tensors(layers)
    groups: list[list[str]] = [[]]
    size = 0
    for name, shp in specs.items():
        nbytes = 2 * math.prod(shp)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    gen = torch.Generator().manual_seed(seed)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(shape.config(layers), indent=2) + "\n")
    for fname, group in zip(files, groups, strict=True):
        shards: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
        for name in group:
            kind, block = kind_of(name)
            w = _base_weight(kind, specs[name], gen)
            shards["aligned"][name] = w
            changes = block is not None and len(specs[name]) == 2 and kind in degraded
            shards["degraded"][name] = twin(w, degraded[kind], block, layers, gen) if changes else w
            if task is not None:
                shards["task"][name] = twin(w, task[kind], block, layers, gen) if kind in task else w
        for n in names:
            save_file(shards[n], str(dirs[n] / fname), metadata={"format": "pt"})
        del shards
    weight_map = {name: fname for fname, group in zip(files, groups, strict=True) for name in group}
    total = sum(2 * math.prod(s) for s in specs.values())
    for d in dirs.values():
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dirs


def check_loadable(folder: Path, *, instantiate: bool) -> None:
    """transformers reads the config; the tensors match what the model class expects."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(folder)
    if instantiate:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        assert model.config.num_hidden_layers == cfg.num_hidden_layers
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    want = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    have = Checkpoint(folder).manifest()
    if want != have:
        missing = sorted(set(want) ^ set(have))[:5]
        raise AssertionError(f"{folder}: tensors differ from LlamaForCausalLM's: {missing}")


def describe(stats: dict[str, KindStats]) -> dict[str, dict[str, float]]:
    """A small summary of a profile for the results file."""
    out = {}
    for kind, s in sorted(stats.items()):
        z = s.z.numpy().astype(np.float64)
        out[kind] = {"rel_norm_mean": round(float(np.mean(s.rel)), 5),
                     "kurtosis": round(float(np.mean(z**4) / max(np.mean(z**2) ** 2, 1e-30)), 2),
                     "row_rms_cv": round(float(s.rows.std() / s.rows.mean().clamp_min(1e-30)), 3)}  # fmt: skip
    return out

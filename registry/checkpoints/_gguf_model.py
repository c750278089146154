"""The model a GGUF header describes: a supported architecture with every tensor it needs."""

from __future__ import annotations

import re

from ..errors import InvalidCheckpointError
from ._gguf_header import (
    _RECREATE,
    _STRING,
    SUPPORTED_ARCHITECTURES,
    GgufArray,
    GgufHeader,
    ModelSpec,
)


def check_model(h: GgufHeader) -> ModelSpec:
    """Check that a header describes a complete model this import can convert.

    Args:
        h: a header from :func:`read_gguf_header`.

    Returns:
        The :class:`ModelSpec` (sizes) the metadata describes.

    Raises:
        InvalidCheckpointError: an unsupported architecture, tokenizer or RoPE scaling, a
            split file, metadata out of range or inconsistent, or a tensor missing,
            unexpected or of the wrong shape.
    """
    arch = h.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise InvalidCheckpointError(h.path, f"architecture {arch!r} is not supported (supported: "
                                     f"{', '.join(SUPPORTED_ARCHITECTURES)}): convert the original checkpoint instead")  # fmt: skip
    split = h.metadata.get("split.count", 1)
    if split != 1:
        raise InvalidCheckpointError(h.path, f"one shard of a {split!r}-part split GGUF: merge the parts with "
                                     "`llama-gguf-split --merge` first")  # fmt: skip
    if h.metadata.get(f"{arch}.rope.scaling.type", "none") != "none" or any(
        t.name == "rope_freqs.weight" for t in h.tensors
    ):
        raise InvalidCheckpointError(h.path, "the file uses RoPE scaling, which transformers' GGUF loader does not "
                                     "carry over: convert the original Hugging Face checkpoint instead")  # fmt: skip
    tokens = h.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, GgufArray) or tokens.element_type != _STRING or tokens.count == 0:
        raise InvalidCheckpointError(
            h.path, f"the file has no tokenizer vocabulary (tokenizer.ggml.tokens): {_RECREATE}"
        )
    if h.metadata.get("tokenizer.ggml.model") not in ("gpt2", "llama"):
        raise InvalidCheckpointError(h.path, f"tokenizer model {h.metadata.get('tokenizer.ggml.model')!r} is not "
                                     "supported (gpt2 or llama BPE/sentencepiece): convert the original checkpoint")  # fmt: skip
    num = _MetaInts(h, arch)
    hidden = num.get("embedding_length", 1, 1 << 16)
    heads = num.get("attention.head_count", 1, hidden)
    spec = ModelSpec(arch=arch, layers=num.get("block_count", 1, 1024), hidden=hidden, heads=heads,
                     kv_heads=num.get("attention.head_count_kv", 1, heads, default=heads),
                     ffn=num.get("feed_forward_length", 1, 1 << 20), vocab=tokens.count,
                     context=num.get("context_length", 1, 1 << 24))  # fmt: skip
    head_dim = hidden // heads
    if hidden % heads or heads % spec.kv_heads or head_dim % 2:
        raise InvalidCheckpointError(h.path, f"{heads} heads ({spec.kv_heads} key/value) do not split a width of "
                                     f"{hidden} into even head sizes: the metadata is corrupt")  # fmt: skip
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        num.get(key, head_dim, head_dim, default=head_dim)
    if num.get("vocab_size", 1, 1 << 24, default=spec.vocab) != spec.vocab:
        raise InvalidCheckpointError(h.path, f"{arch}.vocab_size disagrees with the {spec.vocab:,} tokens in the "
                                     "vocabulary: the metadata is corrupt")  # fmt: skip
    eps = h.metadata.get(f"{arch}.attention.layer_norm_rms_epsilon")
    if not isinstance(eps, float) or not 0 < eps < 1:
        raise InvalidCheckpointError(h.path, f"metadata {arch}.attention.layer_norm_rms_epsilon = {eps!r} is "
                                     f"missing or not in (0, 1): {_RECREATE}")  # fmt: skip
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
        tid = h.metadata.get(f"tokenizer.ggml.{key}", 0)
        if not isinstance(tid, int) or not 0 <= tid < spec.vocab:
            raise InvalidCheckpointError(h.path, f"tokenizer.ggml.{key} = {tid!r} is not a token of the "
                                         f"{spec.vocab:,}-token vocabulary: the metadata is corrupt")  # fmt: skip
    _check_tensors(h, spec)
    return spec


class _MetaInts:
    def __init__(self, h: GgufHeader, arch: str) -> None:
        self.h, self.arch = h, arch

    def get(self, key: str, lo: int, hi: int, *, default: int | None = None) -> int:
        full = f"{self.arch}.{key}"
        value = self.h.metadata.get(full, default)
        if value is None:
            raise InvalidCheckpointError(self.h.path, f"metadata {full} is missing: {_RECREATE}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidCheckpointError(self.h.path, f"metadata {full} should be one integer, not "
                                         f"{type(value).__name__}: this layout is not supported")  # fmt: skip
        if not lo <= value <= hi:
            raise InvalidCheckpointError(self.h.path, f"metadata {full} = {value:,} is out of range "
                                         f"[{lo:,}, {hi:,}]: the metadata is corrupt")  # fmt: skip
        return value


def _expected_tensors(
    s: ModelSpec,
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) tensor names with their shapes in torch order."""
    h, q, kv = s.hidden, s.hidden, s.kv_heads * (s.hidden // s.heads)
    required = {"token_embd.weight": (s.vocab, h), "output_norm.weight": (h,)}
    block = {"attn_norm.weight": (h,), "attn_q.weight": (q, h), "attn_k.weight": (kv, h), "attn_v.weight": (kv, h),
             "attn_output.weight": (h, q), "ffn_norm.weight": (h,), "ffn_gate.weight": (s.ffn, h),
             "ffn_up.weight": (s.ffn, h), "ffn_down.weight": (h, s.ffn)}  # fmt: skip
    if s.arch == "qwen2":
        block |= {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}
    for i in range(s.layers):
        required |= {f"blk.{i}.{k}": v for k, v in block.items()}
    return required, {"output.weight": (s.vocab, h)}


def _check_tensors(h: GgufHeader, s: ModelSpec) -> None:
    required, optional = _expected_tensors(s)
    shapes = {t.name: t.shape for t in h.tensors}
    missing = sorted(set(required) - set(shapes), key=_natural)
    if missing:
        raise InvalidCheckpointError(h.path, f"{len(missing)} tensor(s) of a {s.layers}-layer {s.arch} model are "
                                     f"missing (first: {missing[0]}): the file is incomplete; {_RECREATE}")  # fmt: skip
    extra = sorted(set(shapes) - set(required) - set(optional), key=_natural)
    if extra:
        raise InvalidCheckpointError(h.path, f"unexpected tensor {extra[0]} for a {s.layers}-layer {s.arch} model "
                                     f"({len(extra)} in all): this variant is not supported")  # fmt: skip
    for name, shape in shapes.items():
        want = required.get(name) or optional[name]
        if shape != want:
            raise InvalidCheckpointError(h.path, f"tensor {name} has shape {list(shape)}, the metadata implies "
                                         f"{list(want)}: the file is inconsistent")  # fmt: skip


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]

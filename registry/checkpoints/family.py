"""Architecture-family fingerprints and compatibility answers.

Two levels:

* the *family key*: model type, architecture class and the normalized
  hyperparameters that fix every tensor's shape (layers, hidden, intermediate,
  heads, kv-heads, head dim, vocab, tied embeddings). Its sha256 is the
  family id. Config spellings differ between architectures (``n_embd`` vs
  ``hidden_size``), so each field is read through a list of aliases.
* the *tensor manifest hash*: sorted tensor names and shapes, dtype excluded,
  so fp32 and bf16 copies of one model share it.

Nothing here lists the toy world's families: everything is read from the
config and the tensor names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidCheckpointError

_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim", "d_ff"),
    "heads": ("num_attention_heads", "n_head", "num_heads"),
    "kv_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "vocab": ("vocab_size",),
}
_LAYER_RE = re.compile(r"^(?P<prefix>(?:[A-Za-z_][\w]*\.)*?[A-Za-z_]\w*)\.(?P<idx>\d+)\.(?P<rest>.+)$")
_EMBED_HINTS = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in")


@dataclass(frozen=True)
class FamilyKey:
    model_type: str
    architecture: str
    num_layers: int
    hidden: int
    intermediate: int | None
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    vocab: int
    tied_embeddings: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def id(self) -> str:
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"safegene-family-v1\n" + canon.encode()).hexdigest()


def _pick(config: Mapping[str, Any], field: str) -> int | None:
    for alias in _ALIASES[field]:
        value = config.get(alias)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def family_key(config: Mapping[str, Any], tensor_names: list[str]) -> FamilyKey:
    """Normalize a model config (plus its tensor names) into a family key.

    Raises:
        InvalidCheckpointError: config lacks model_type, layer count, hidden size or vocab.
    """
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InvalidCheckpointError("config.json", "has no model_type; is it a transformers config?")
    archs = config.get("architectures")
    architecture = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    num_layers, hidden, vocab = _pick(config, "num_layers"), _pick(config, "hidden"), _pick(config, "vocab")
    if num_layers is None or hidden is None or vocab is None:
        raise InvalidCheckpointError(
            "config.json", "lacks the layer count, hidden size or vocab size of the model"
        )
    heads = _pick(config, "heads")
    kv_heads = _pick(config, "kv_heads") or heads
    head_dim = _pick(config, "head_dim") or (hidden // heads if heads else None)
    intermediate = _pick(config, "intermediate") or (4 * hidden if model_type == "gpt2" else None)
    return FamilyKey(
        model_type=model_type,
        architecture=architecture,
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        tied_embeddings=_is_tied(config, tensor_names),
    )


def _is_tied(config: Mapping[str, Any], tensor_names: list[str]) -> bool:
    tie = config.get("tie_word_embeddings")
    if isinstance(tie, bool):
        return tie
    return not any(n.endswith("lm_head.weight") for n in tensor_names)


def manifest_hash(manifest: Mapping[str, tuple[int, ...]]) -> str:
    canon = json.dumps([[n, list(manifest[n])] for n in sorted(manifest)], separators=(",", ":"))
    return hashlib.sha256(b"safegene-manifest-v1\n" + canon.encode()).hexdigest()


def layer_of(name: str) -> tuple[int, str] | None:
    """(block index, template) of a tensor inside a repeated block, else None.

    ``model.layers.3.mlp.up_proj.weight`` → ``(3, "model.layers.{i}.mlp.up_proj.weight")``.
    """
    m = _LAYER_RE.match(name)
    if not m:
        return None
    return int(m.group("idx")), f"{m.group('prefix')}.{{i}}.{m.group('rest')}"


def layer_templates(names: list[str]) -> list[str]:
    out = {t[1] for n in names if (t := layer_of(n)) is not None}
    return sorted(out)


def is_embedding(name: str) -> bool:
    return any(h in name for h in _EMBED_HINTS) or name.endswith("lm_head.weight")


def compatibility_reasons(
    vector_manifest: Mapping[str, tuple[int, ...]],
    target_manifest: Mapping[str, tuple[int, ...]],
    *,
    target_tied: bool = False,
) -> list[str]:
    """Why a vector does not fit a target; empty when every tensor fits.

    A vector fits when every tensor it carries exists in the target with the
    same shape. Tied ``lm_head`` and vocabulary resizes get their own words.
    """
    reasons: list[str] = []
    for name in sorted(vector_manifest):
        shape = tuple(vector_manifest[name])
        if name not in target_manifest:
            if name.endswith("lm_head.weight") and target_tied:
                reasons.append(
                    f"{name}: the target ties lm_head to its input embeddings; "
                    "patch the embedding instead or rebuild the vector without lm_head"
                )
            else:
                reasons.append(f"{name}: missing from the target")
            continue
        tshape = tuple(target_manifest[name])
        if tshape != shape:
            if is_embedding(name) and len(shape) == 2 and shape[1:] == tshape[1:]:
                reasons.append(
                    f"{name}: vocabulary resized ({shape[0]} rows in the vector, "
                    f"{tshape[0]} in the target)"
                )
            else:
                reasons.append(f"{name}: shape {list(shape)} in the vector, {list(tshape)} in the target")
    return reasons

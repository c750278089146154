"""Safety vectors as PEFT LoRA adapters, both ways.

Export: every selected block's coefficient-scaled slice ``λ_l · v_l`` is cut,
tensor by tensor, into a rank-``r`` factorisation by truncated SVD
(``M ≈ B·A`` with ``B = U_r √S_r`` and ``A = √S_r V_rᵀ``); the rank of each
module is the smallest that keeps ``energy`` of ``Σ σ²`` (``energy=1``: the numerical
rank, exact to fp32 rounding), or a fixed ``rank``.
``lora_alpha`` equals each module's rank so that PEFT's scaling is 1. The
written folder::

    OUT/
    ├── adapter_config.json          PEFT LoraConfig (r, lora_alpha, target_modules,
    │                                rank_pattern / alpha_pattern where ranks differ)
    ├── adapter_model.safetensors    base_model.model.<module>.lora_A.weight / lora_B.weight
    └── safegene_export.json         vector, coefficients, per-module rank and relative error

Only 2-D weights of ``nn.Linear`` (and GPT-2 style ``Conv1D``, whose weight is
stored ``[in, out]``: it is exported transposed with ``fan_in_fan_out``) can be
LoRA targets. Which module a tensor belongs to is read from the model class the
family's config names, instantiated on the meta device (no weights are read).

Import: a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``;
pickle ``adapter_model.bin`` is refused) becomes a vector with
``v = B·A·scaling`` per module (``scaling = lora_alpha / r``, or
``/ √r`` with ``use_rslora``; ``rank_pattern`` / ``alpha_pattern`` honoured as
PEFT matches them), stored one slice per block like an extracted vector.

This module holds what both directions share; the export is
:mod:`.peft_export`, the import :mod:`.peft_import`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..checkpoints.reader import Checkpoint
from ..errors import InvalidCheckpointError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
SIDECAR = "safegene_export.json"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>[A-Za-z0-9_.\-]+)\.lora_(?P<ab>[AB])\.weight$")
TARGET_KINDS = ("linear", "conv1d")


@dataclass(frozen=True)
class ModuleExport:
    """One LoRA target of an export."""

    module: str
    tensor: str
    layer: int | None
    coefficient: float
    rank: int
    full_rank: int
    energy: float
    relative_error: float
    fan_in_fan_out: bool


@dataclass(frozen=True)
class PeftExport:
    """What :func:`export_peft` wrote."""

    path: str
    vector: str
    hash: str
    target: str | None
    coefficients: dict[str, float]
    r: int
    modules: list[ModuleExport]
    skipped: list[str] = field(default_factory=list)
    format: str = "peft"
    # KL to the patch on the shots: {"checked", "kl", "tolerance", "shots", "energy", "within_tolerance"}
    behaviour: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, float]:
        """Relative Frobenius reconstruction error per module."""
        return {mod.module: mod.relative_error for mod in self.modules}

    @property
    def max_relative_error(self) -> float:
        return max((mod.relative_error for mod in self.modules), default=0.0)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(errors=self.errors, max_relative_error=self.max_relative_error)
        return out


def module_kinds(ckpt: Checkpoint, tensor_names: Iterable[str]) -> dict[str, str]:
    """Kind of the module owning each weight: ``linear``, ``conv1d`` or the reason it is neither.

    The model class named by the config is built on the meta device, so this
    reads no weights. Remote code is never run.

    Raises:
        InvalidCheckpointError: transformers cannot build the model from the config.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        cfg = AutoConfig.from_pretrained(str(ckpt.path), trust_remote_code=False)
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        with torch.device("meta"):
            model = cls(cfg) if isinstance(cls, type) else AutoModelForCausalLM.from_config(cfg)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - transformers raises many unrelated types here
        raise InvalidCheckpointError(ckpt.path, f"transformers cannot build this model's modules: {exc}") from None
    out: dict[str, str] = {}
    for name in tensor_names:
        if not name.endswith(".weight"):
            out[name] = "not a module weight"
            continue
        try:
            mod = model.get_submodule(name[: -len(".weight")])
        except AttributeError:
            out[name] = f"no such module in {type(model).__name__}"
            continue
        if isinstance(mod, torch.nn.Linear):
            out[name] = "linear"
        elif isinstance(mod, Conv1D):
            out[name] = "conv1d"
        else:
            out[name] = f"{type(mod).__name__} is not nn.Linear"
    return out

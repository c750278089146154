"""A PEFT ``adapter_config.json``, parsed as untrusted input: the parts that fix a LoRA delta.

``ΔW = B·A·scaling`` per module, with ``scaling = lora_alpha / r`` (or
``/ √r`` with ``use_rslora``) and ``rank_pattern`` / ``alpha_pattern`` matched
as PEFT matches them. Options whose adapter is not that plain delta are refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoints.reader import MAX_JSON_BYTES
from ..errors import InvalidInputError

ADAPTER_CONFIG = "adapter_config.json"
# PEFT options whose adapters are not a plain ΔW = B·A·scaling (or carry full modules).
_REFUSED_OPTIONS = ("use_dora", "lora_bias", "modules_to_save", "target_parameters",
                    "trainable_token_indices", "layer_replication", "alora_invocation_tokens")  # fmt: skip
_MAX_PATTERN_CHARS = 512
_NESTED_QUANTIFIER = re.compile(r"\)[*+?{]")


@dataclass(frozen=True)
class LoraSettings:
    """The parts of an adapter_config.json that fix ΔW."""

    r: int
    lora_alpha: float
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool

    def scaling(self, module: str) -> tuple[int, float]:
        """(configured rank, scaling) of ``module`` as PEFT resolves them."""
        r = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str:
    # PEFT's get_pattern_key: the first pattern that matches a dotted suffix of the module path.
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def read_lora_config(path: Path) -> LoraSettings:
    """Parse and check an untrusted adapter_config.json.

    Raises:
        InvalidInputError: not a JSON object, not LoRA, bad numbers or patterns, or an option
            whose adapter is not a plain B·A·scaling delta.
    """
    if not path.is_file():
        raise InvalidInputError(f"{path.parent}: no {ADAPTER_CONFIG}; is this a PEFT adapter folder?")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InvalidInputError(f"{path}: too large to be an adapter config")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise InvalidInputError(f"{path}: peft_type {str(cfg.get('peft_type'))[:40]!r} is not LORA")
    refused = [k for k in _REFUSED_OPTIONS if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        refused.append(f"bias={str(cfg.get('bias'))[:20]}")
    if refused:
        raise InvalidInputError(f"{path}: {', '.join(refused)} adapters are not a plain LoRA delta; "
                                "merge them with PEFT and extract a vector instead")  # fmt: skip
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    rp, ap = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    if not _is_int(r) or r < 1 or not _is_num(alpha):
        raise InvalidInputError(f"{path}: r must be a positive integer and lora_alpha a finite number")
    if not isinstance(rp, dict) or not all(_is_int(v) and v >= 1 for v in rp.values()):
        raise InvalidInputError(f"{path}: rank_pattern must map patterns to positive integers")
    if not isinstance(ap, dict) or not all(_is_num(v) for v in ap.values()):
        raise InvalidInputError(f"{path}: alpha_pattern must map patterns to finite numbers")
    for key in [*rp, *ap]:
        try:  # quantified groups are refused: the classic catastrophic-backtracking shape
            if len(key) > _MAX_PATTERN_CHARS or _NESTED_QUANTIFIER.search(key):
                raise re.error("too long or a quantified group")
            re.compile(rf"(.*\.)?({key})$")
        except re.error as exc:
            raise InvalidInputError(f"{path}: pattern {key[:60]!r} is not a usable regex ({exc})") from None
    rslora = cfg.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise InvalidInputError(f"{path}: use_rslora must be true or false")
    return LoraSettings(int(r), float(alpha), {k: int(v) for k, v in rp.items()},
                        {k: float(v) for k, v in ap.items()}, rslora)  # fmt: skip


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

"""The recalibration fit's settings (loss weights, bounds, optimiser).

Apart from :mod:`registry.method.recalibrate`, which re-exports them, so that
the CLI and the catalog side can name them without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidInputError


@dataclass(frozen=True)
class FitSettings:
    """Settings of the λ fit; every value is checked when the settings are made.

    ``shots_per_step``: each Adam step's loss is over this many shots, drawn per
    kind in proportion with ``seed`` (0: every shot every step). ``answer_tokens``:
    only the first that many tokens of each answer are learned (0: all). Both
    bound a step's cost on a real model; ``batch_size`` bounds one forward's rows.

    ``gamma`` = 0.002 and ``lambda_max`` = 4 were chosen on the real world's shots
    split, never its held-out prompts (``benchmarks/choose_fit_settings.py``,
    ``benchmarks/results/fit-settings-choice-arithmetic.md``): at 0.01 and 2 the
    fit left λ ≈ 0 on all but three blocks.

    Raises:
        InvalidInputError: a value outside its range (λ_max ≤ 0 would subtract
            the safety vector; a negative weight would reward the loss it weighs).
    """

    beta: float = 1.0
    beta_benign: float = 1.0
    gamma: float = 0.002
    lambda_max: float = 4.0
    init: float = 0.5
    steps: int = 40
    lr: float = 0.1
    batch_size: int = 32
    shots_per_step: int = 16
    answer_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("beta", "beta_benign", "gamma", "lambda_max", "init", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidInputError(f"fit setting {name} must be a finite number, got {value!r}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"fit setting {name} must be an integer ≥ 1, got {value!r}")
        for name in ("shots_per_step", "answer_tokens", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"fit setting {name} must be an integer ≥ 0, got {value!r}")
        for name in ("beta", "beta_benign", "gamma"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"fit setting {name} must be ≥ 0, got {getattr(self, name)}")
        if self.lambda_max <= 0:
            raise InvalidInputError(
                f"lambda_max must be > 0, got {self.lambda_max}: λ ≤ 0 would subtract the safety vector"
            )
        if not 0 <= self.init <= self.lambda_max:
            raise InvalidInputError(f"init must lie in [0, lambda_max={self.lambda_max}], got {self.init}")
        if self.lr <= 0:
            raise InvalidInputError(f"lr must be > 0, got {self.lr}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

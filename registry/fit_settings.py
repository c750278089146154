"""The recalibration fit's settings (loss weights, bounds, optimiser).

Apart from :mod:`registry.recalibrate`, which re-exports them, so that the CLI
and the catalog side can name them without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FitSettings:
    beta: float = 1.0
    beta_benign: float = 1.0
    gamma: float = 0.01
    lambda_max: float = 2.0
    init: float = 0.5
    steps: int = 40
    lr: float = 0.1
    batch_size: int = 32

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

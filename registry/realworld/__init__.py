"""The real-LM safety world: SmolLM2-135M-Instruct aligned, degraded and task-tuned.

Unlike the toy worlds (:mod:`registry.toy`), the base is a real pretrained chat
model with a real tokenizer, so refusal is learned on top of genuine language
ability. See :mod:`registry.realworld.build` for the layout and stages and
:mod:`registry.realworld.prompts` for the data and splits.
"""

from __future__ import annotations

from .build import (
    DEFAULT_BASE,
    QUICK_RECIPE,
    RealRecipe,
    RealStage,
    RealWorld,
    build_real_world,
    load_real_world,
    recipe_digest,
)
from .prompts import RealData, data_digest, load_data, write_probe_files
from .quickeval import QuickEval, quick_eval, score
from .tasks import (
    SCORERS,
    TASKS,
    arithmetic_correct,
    first_number_correct,
    json_fields_correct,
    make_tasks,
)

__all__ = [
    "DEFAULT_BASE",
    "QUICK_RECIPE",
    "SCORERS",
    "TASKS",
    "QuickEval",
    "RealData",
    "RealRecipe",
    "RealStage",
    "RealWorld",
    "arithmetic_correct",
    "build_real_world",
    "data_digest",
    "first_number_correct",
    "json_fields_correct",
    "load_data",
    "load_real_world",
    "make_tasks",
    "quick_eval",
    "recipe_digest",
    "score",
    "write_probe_files",
]

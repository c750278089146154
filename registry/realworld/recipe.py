"""What decides a real-world build: the stages' schedules and mixtures (hashed into its digest)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RealStage:
    """One fine-tuning stage: steps, learning rate, rows per batch from each pool."""

    steps: int
    lr: float
    mix: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class RealRecipe:
    """Everything that decides a real-world build (hashed into its digest).

    ``batch`` is the sum of every stage's mix. ``task`` uses the pool name
    ``task`` for the task at hand. ``task_checkpoints`` are the steps at which
    the task models are measured on the shots split (the strength curve).
    """

    seed: int = 0
    max_len: int = 96
    train_params: str = "blocks"  # "blocks" (model.layers.*) or "all"
    warmup: int = 5
    threads: int = 1
    gen_max_new_tokens: int = 64
    gen_batch: int = 64
    check_max_new_tokens: int = 64
    task_train_size: int = 240
    # Chosen on the shots split: HRR 10 %, over-refusal 6 % at 32 tokens (9 % at 64). Held-out
    # over-refusal came out at 14 % in the first build, above the 10 % target: reported as
    # measured, never tuned away (held-out prompts choose nothing).
    aligned: RealStage = RealStage(80, 3e-5, (("refuse", 4), ("benign", 4)))
    degraded: RealStage = RealStage(20, 3e-5, (("comply", 6), ("benign", 2)))
    # 240 examples, 2 epochs (6 task rows a batch), a quarter benign chat.
    task: RealStage = RealStage(80, 3e-5, (("task", 6), ("benign", 2)))
    task_checkpoints: tuple[int, ...] = (40, 80)
    check_shots: bool = True


QUICK_RECIPE = RealRecipe(
    max_len=64,
    gen_max_new_tokens=16,
    check_max_new_tokens=8,
    task_train_size=16,
    aligned=RealStage(4, 1e-3, (("refuse", 2), ("benign", 2))),
    degraded=RealStage(2, 1e-3, (("comply", 2), ("benign", 2))),
    task=RealStage(3, 1e-3, (("task", 2), ("benign", 2))),
    task_checkpoints=(3,),
)

"""Shots for recalibration: encoded per kind, padded on use, and drawn in stratified mini-batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidInputError
from ..evaluation.probes import Probe
from ..evaluation.textio import IGNORE_INDEX, collate, encode_example, encode_prompt, pad_id_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Encoded = tuple[list[int], list[int]]
KINDS = ("harmful", "task", "benign", "benign_kl")


@dataclass
class ShotBatches:
    """Encoded shots per kind (``harmful``, ``task``, ``benign``, ``benign_kl``), padded into chunks on use.

    ``benign_kl`` holds the benign shots without an answer: their term is the KL
    to the unpatched model over the prompt's tokens.
    """

    examples: dict[str, list[Encoded]]
    pad: int
    batch_size: int = 32
    device: str = "cpu"

    def chunks(self, kind: str, rows: Sequence[int] | None = None) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """``(example indices, right-padded batch)`` of at most ``batch_size`` rows, over ``rows`` (default all)."""
        idx = list(range(len(self.examples[kind]))) if rows is None else list(rows)
        out = []
        for i in range(0, len(idx), self.batch_size):
            part = idx[i : i + self.batch_size]
            batch = collate([self.examples[kind][j] for j in part], self.pad, side="right")
            out.append((part, {k: v.to(self.device) for k, v in batch.items()}))
        return out

    def counts(self) -> dict[str, int]:
        return {k: len(self.examples[k]) for k in KINDS}

    # The padded chunks of each kind, as lists of batches.
    @property
    def harmful(self) -> list[dict[str, torch.Tensor]]:
        return [b for _, b in self.chunks("harmful")]

    @property
    def task(self) -> list[dict[str, torch.Tensor]]:
        return [b for _, b in self.chunks("task")]

    @property
    def benign(self) -> list[dict[str, torch.Tensor]]:
        return [b for _, b in self.chunks("benign")]

    @property
    def benign_kl(self) -> list[dict[str, torch.Tensor]]:
        return [b for _, b in self.chunks("benign_kl")]


def _cut(example: Encoded, answer_tokens: int) -> Encoded:
    """The example with its answer cut to the first ``answer_tokens`` labelled tokens (0: whole)."""
    ids, labels = example
    if not answer_tokens:
        return example
    start = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))
    end = min(len(ids), start + answer_tokens)
    return ids[:end], labels[:end]


def encode_shots(tokenizer: PreTrainedTokenizerBase, shots: Sequence[Probe], *, batch_size: int = 32,
                 device: str = "cpu", answer_tokens: int = 0) -> ShotBatches:  # fmt: skip
    """Tokenize shots per kind.

    ``answer_tokens``: learn only the first that many tokens of each answer (0:
    the whole answer and its EOS). A refusal is decided in its first tokens; a
    long benign answer then costs no more than a short one.

    Raises:
        InvalidInputError: no harmful shot with a refusal to learn.
    """
    pad = pad_id_of(tokenizer)

    def answered(kind: str) -> list[Encoded]:
        return [_cut(encode_example(tokenizer, p.prompt, p.response), answer_tokens)
                for p in shots if p.kind == kind and p.response]  # fmt: skip

    examples = {kind: answered(kind) for kind in ("harmful", "task", "benign")}
    examples["benign_kl"] = [(ids, ids) for ids in (encode_prompt(tokenizer, p.prompt) for p in shots
                                                    if p.kind == "benign" and not p.response)]  # fmt: skip
    if not examples["harmful"]:
        raise InvalidInputError(
            "the shots hold no harmful prompt with a refusal in 'response'; recalibration needs some"
        )
    return ShotBatches(examples, pad, batch_size, device)


class ShotSampler:
    """Stratified mini-batches of shots: each kind gets its share of ``per_step``.

    Each kind is drawn without replacement from a seeded shuffle, reshuffled
    when used up (an epoch per kind), so every shot is seen equally often.
    """

    def __init__(self, counts: dict[str, int], per_step: int, seed: int) -> None:
        self.counts = {k: n for k, n in counts.items() if n}
        self.take = _shares(self.counts, per_step)
        self.rng = random.Random(seed)
        self.order: dict[str, list[int]] = {k: [] for k in self.counts}

    def draw(self) -> dict[str, list[int]]:
        out = {}
        for kind, n in self.take.items():
            picked: list[int] = []
            while len(picked) < n:
                if not self.order[kind]:
                    fresh = list(range(self.counts[kind]))
                    self.rng.shuffle(fresh)
                    # the ones this draw already holds go last, so a draw never repeats a shot
                    self.order[kind] = [i for i in fresh if i in picked] + [i for i in fresh if i not in picked]
                picked.append(self.order[kind].pop())
            out[kind] = sorted(picked)
        return out


def _shares(counts: dict[str, int], per_step: int) -> dict[str, int]:
    """``per_step`` split over the kinds in proportion to their counts (largest remainder; ≥ 1 each, ≤ count)."""
    total = sum(counts.values())
    exact = {k: per_step * n / total for k, n in counts.items()}
    share = {k: max(1, min(counts[k], int(x))) for k, x in exact.items()}
    by_remainder = sorted(exact, key=lambda k: exact[k] - share[k], reverse=True)
    for k in by_remainder:  # short: the largest remainders get one more
        if sum(share.values()) >= per_step:
            break
        if share[k] < counts[k]:
            share[k] += 1
    for k in reversed(by_remainder):  # over (the ≥ 1 floor): the most over their share give one back
        if sum(share.values()) <= per_step:
            break
        if share[k] > 1:
            share[k] -= 1
    return share

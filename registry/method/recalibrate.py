"""Few-shot, layer-wise recalibration and data-aware layer scoring (pure torch).

The patched weights are linear in the per-block coefficients,
``θ(λ) = θ_T + Σ_l λ_l · v_l``, so only the λ's are trained: the model's own
parameters stay frozen and ``torch.func.functional_call`` substitutes
``W_T + λ_l v_l`` for the tensors the vector carries. The loss is

    CE(refusals | harmful shots)
    + β · CE(answers | task shots)
    + β_benign · (CE(helpful answers | benign shots), or KL to T when a benign
      shot has no answer)
    + γ · ‖λ‖₁

with λ projected onto [0, λ_max] after every step. The benign term is what
keeps the fit from converging to "refuse everything" (RESTA's failure mode).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call

from ..errors import IncompatibleError, InvalidInputError
from ..evaluation.textio import IGNORE_INDEX
from .fit_settings import FitSettings
from .shots import KINDS, ShotBatches, ShotSampler, encode_shots

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["FitResult", "FitSettings", "LayerScore", "ShotBatches", "apply_in_memory", "encode_shots",
           "fit_coefficients", "kl_refs", "score_layers"]

Slices = dict[int, dict[str, torch.Tensor]]  # position -> tensor name -> v (fp32)


@dataclass(frozen=True)
class FitResult:
    coefficients: dict[int, float]  # position -> λ
    losses: list[float]
    seconds: float
    terms: dict[str, float] = field(default_factory=dict)


def check_fits(model: PreTrainedModel, slices: Slices) -> None:
    params = dict(model.named_parameters())
    problems = []
    for tensors in slices.values():
        for name, v in tensors.items():
            if name not in params:
                problems.append(f"{name}: not a parameter of the loaded model")
            elif tuple(params[name].shape) != tuple(v.shape):
                problems.append(f"{name}: shape {list(v.shape)} vs model {list(params[name].shape)}")
    if problems:
        raise IncompatibleError("the vector does not fit the model", problems)


class _Group:
    """Consecutive shot chunks (any kinds) as one right-padded batch: one forward for all of them.

    With right padding a row's real positions never attend to its padding, so
    each chunk's terms are what its own forward would give.
    """

    def __init__(self, chunks: list[tuple[str, list[int], dict[str, torch.Tensor]]]) -> None:
        width = max(b["input_ids"].shape[1] for _, _, b in chunks)
        self.spans: list[tuple[str, list[int], int, int, int]] = []  # kind, examples, first row, end row, own width
        ids, mask, labels = [], [], []
        row = 0
        for kind, examples, b in chunks:
            n, w = b["input_ids"].shape
            pad = (0, width - w)
            lab = torch.full_like(b["input_ids"], IGNORE_INDEX) if kind == "benign_kl" else b["labels"]
            ids.append(torch.nn.functional.pad(b["input_ids"], pad, value=0))
            mask.append(torch.nn.functional.pad(b["attention_mask"], pad, value=0))
            labels.append(torch.nn.functional.pad(lab, pad, value=IGNORE_INDEX))
            self.spans.append((kind, examples, row, row + n, w))
            row += n
        self.kwargs = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask)}
        self.labels = torch.cat(labels)[:, 1:]
        self.ce_rows = max((b for kind, _, _, b, _ in self.spans if kind != "benign_kl"), default=0)  # CE chunks first

    def chunk_terms(self, model: PreTrainedModel, overrides: dict[str, torch.Tensor],
                    refs: Sequence[torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:  # fmt: skip
        """(kind, term) of each chunk: CE is the mean over its labelled tokens, KL the masked mean vs ``refs``.

        ``refs``: the unpatched model's log-probabilities of each KL example
        (:func:`kl_refs`). The output head runs only where a term needs it
        (labelled tokens, the KL rows' real tokens): on a real vocabulary the
        head and its softmax over every position cost as much as several
        transformer blocks.
        """
        logits_at = _head_at(model, overrides, self.kwargs)
        if self.ce_rows:
            n = self.ce_rows
            labels = self.labels[:n]
            live = labels != IGNORE_INDEX
            lg = logits_at(slice(0, n), slice(0, -1), live).float()
            token_ce = torch.zeros(live.shape, dtype=lg.dtype, device=lg.device)
            token_ce[live] = torch.nn.functional.cross_entropy(lg, labels[live], reduction="none")
        for kind, examples, a, b, w in self.spans:
            if kind == "benign_kl":
                m = self.kwargs["attention_mask"][a:b, :w].bool()
                ref = torch.cat([refs[i] for i in examples])  # row-major real positions, as ``[m]`` orders them
                logp = logits_at(slice(a, b), slice(0, w), m).float().log_softmax(-1)
                yield kind, (ref.exp() * (ref - logp)).sum() / m.sum()
            else:
                yield kind, token_ce[a:b].sum() / live[a:b].sum()


# Models whose logits are exactly ``output_embeddings(last_hidden_state)`` (no scaling,
# no soft-capping): for these the head can run on selected positions only.
_PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "olmo2"})
LogitsAt = Callable[[slice, slice, torch.Tensor], torch.Tensor]


def _head_at(model: PreTrainedModel, overrides: dict[str, torch.Tensor], kwargs: dict[str, torch.Tensor]) -> LogitsAt:
    """One forward; returns ``logits_at(rows, cols, mask)``: logits at the masked positions of that window."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    head = model.get_output_embeddings()
    plain = (getattr(model.config, "model_type", None) in _PLAIN_HEAD and head is not None
             and getattr(head, "bias", None) is None and prefix != "."
             and all(k.startswith(prefix) for k in overrides))  # fmt: skip
    if not plain:  # the whole logits, as the model computes them
        logits = functional_call(model, overrides, args=(), kwargs=kwargs).logits
        return lambda rows, cols, mask: logits[rows, cols][mask]
    inner = {k[len(prefix):]: v for k, v in overrides.items()}
    hidden = _hidden_states(getattr(model, prefix[:-1]), inner, kwargs)
    return lambda rows, cols, mask: head(hidden[rows, cols][mask])


MIN_SHARED_PREFIX = 8  # tokens: below this, one plain forward


def shared_prefix(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """How many leading tokens every row has in common (real tokens, not padding)."""
    same = (ids == ids[:1]).all(0) & mask.bool().all(0)
    return int(same.int().cumprod(0).sum())


def _hidden_states(base: torch.nn.Module, overrides: dict[str, torch.Tensor], kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The base model's last hidden states, the rows' common prefix computed once.

    A chat template puts the same system turn before every prompt (24 of
    SmolLM2's ~65 tokens a shot): it is run for one row, its keys and values
    repeated for the batch, and the rest of every row attends to them. With
    right padding that is the batch's own forward, to float rounding.
    """
    ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
    n, p = ids.shape[0], shared_prefix(ids, mask)
    cache_kw = _cache_argument(base)
    if n < 2 or p < MIN_SHARED_PREFIX or p >= ids.shape[1] or cache_kw is None:
        return functional_call(base, overrides, args=(), kwargs=kwargs).last_hidden_state
    pre = functional_call(base, overrides, args=(), kwargs={"input_ids": ids[:1, :p], "use_cache": True})
    cache = getattr(pre, cache_kw)
    cache.batch_repeat_interleave(n)
    rest = functional_call(base, overrides, args=(), kwargs={
        "input_ids": ids[:, p:], "attention_mask": mask, cache_kw: cache, "use_cache": True})  # fmt: skip
    return torch.cat([pre.last_hidden_state.expand(n, -1, -1), rest.last_hidden_state], dim=1)


def _cache_argument(base: torch.nn.Module) -> str | None:
    """The name under which this transformers version passes a KV cache back in (None: none we can use)."""
    params = inspect.signature(base.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _groups(batches: ShotBatches, max_rows: int, rows: dict[str, Sequence[int]] | None = None) -> list[_Group]:
    """The chunks of every kind, in order, grouped into forwards of at most ``max_rows`` rows (or one chunk).

    ``rows``: the examples of each kind to take (default: all). On a small
    model the per-forward overhead (parameter substitution, kernel launches) is
    much of a step, so the few shots of a recalibration (one chunk per kind)
    share one forward; ``batch_size`` still bounds a forward's rows.
    """
    groups: list[list[tuple[str, list[int], dict[str, torch.Tensor]]]] = []
    n_rows = 0
    for kind in KINDS:
        for examples, b in batches.chunks(kind, None if rows is None else rows.get(kind, ())):
            n = b["input_ids"].shape[0]
            if groups and n_rows + n <= max_rows:
                groups[-1].append((kind, examples, b))
                n_rows += n
            else:
                groups.append([(kind, examples, b)])
                n_rows = n
    return [_Group(g) for g in groups]


class _Objective:
    """The loss as a function of the coefficient vector."""

    def __init__(self, model: PreTrainedModel, slices: Slices, batches: ShotBatches, settings: FitSettings,
                 *, ref_logp: list[torch.Tensor] | None = None) -> None:  # fmt: skip
        """``ref_logp``: the unpatched model's log-probabilities on the KL examples, when already computed."""
        self.model, self.settings, self.batches = model, settings, batches
        self.positions = sorted(slices)
        params = dict(model.named_parameters())
        dev = next(model.parameters()).device
        self.base = {n: params[n].detach() for s in slices.values() for n in s}
        self.vecs = {p: {n: v.to(dev, params[n].dtype) for n, v in slices[p].items()} for p in self.positions}
        self.groups = _groups(batches, settings.batch_size)
        self.ref_logp = ref_logp if ref_logp is not None else kl_refs(model, batches)

    def sample(self, rows: dict[str, Sequence[int]]) -> list[_Group]:
        """The forwards of a mini-batch: ``rows`` of each kind."""
        return _groups(self.batches, self.settings.batch_size, rows)

    def overrides(self, lam: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, p in enumerate(self.positions):
            for n, v in self.vecs[p].items():
                out[n] = self.base[n] + lam[i].to(v.dtype) * v
        return out

    def terms(self, lam: torch.Tensor, groups: list[_Group] | None = None) -> dict[str, torch.Tensor]:
        ov = self.overrides(lam)
        zero = lam.sum() * 0
        sums = dict.fromkeys(KINDS, zero)
        counts = dict.fromkeys(sums, 0)
        for group in self.groups if groups is None else groups:
            for kind, term in group.chunk_terms(self.model, ov, self.ref_logp):
                sums[kind] = sums[kind] + term
                counts[kind] += 1
        mean = {k: sums[k] / max(counts[k], 1) for k in sums}
        return {"harmful": mean["harmful"], "task": mean["task"], "benign": mean["benign"] + mean["benign_kl"]}

    def loss(self, lam: torch.Tensor, groups: list[_Group] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        t = self.terms(lam, groups)
        s = self.settings
        total = t["harmful"] + s.beta * t["task"] + s.beta_benign * t["benign"] + s.gamma * lam.abs().sum()
        return total, {k: float(v.detach()) for k, v in t.items()}


@torch.no_grad()
def kl_refs(model: PreTrainedModel, batches: ShotBatches) -> list[torch.Tensor]:
    """The unpatched model's log-probabilities on each KL example (the benign shots without an answer).

    One ``(tokens, vocab)`` tensor per example, its real (unpadded) positions.
    """
    out: list[torch.Tensor] = []
    for examples, b in batches.chunks("benign_kl"):
        logp = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().log_softmax(-1)
        out += [logp[r, : len(batches.examples["benign_kl"][i][0])] for r, i in enumerate(examples)]
    return out


def fit_coefficients(
    model: PreTrainedModel,
    slices: Slices,
    batches: ShotBatches,
    settings: FitSettings | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Fit one coefficient per slice position by projected Adam on λ only.

    Each step's loss is over ``settings.shots_per_step`` shots, drawn per kind
    in proportion (:class:`ShotSampler`, seeded by ``settings.seed``); over all
    shots when there are no more than that (or ``shots_per_step`` is 0). The
    last loss recorded, and the terms returned, are over all shots.

    Args:
        model: the target model (frozen; its weights are not modified).
        slices: the vector's slices to fit, position -> {tensor name: v}.
        batches: encoded shots (:func:`encode_shots`).
        settings: loss weights, bounds and optimiser settings.
        progress: ``(step, steps)`` callback.

    Returns:
        λ per position, the loss curve and the wall time.
    """
    s = settings or FitSettings()
    if not slices:
        raise InvalidInputError("no layers to recalibrate")
    check_fits(model, slices)
    start = time.perf_counter()
    for p in model.parameters():
        p.requires_grad_(False)
    obj = _Objective(model, slices, batches, s)
    counts = batches.counts()
    sampler = ShotSampler(counts, s.shots_per_step, s.seed) if 0 < s.shots_per_step < sum(counts.values()) else None
    dev = next(model.parameters()).device
    lam = torch.full((len(obj.positions),), s.init, dtype=torch.float32, device=dev, requires_grad=True)
    opt = torch.optim.Adam([lam], lr=s.lr)
    losses: list[float] = []
    terms: dict[str, float] = {}
    for step in range(s.steps):
        opt.zero_grad()
        total, terms = obj.loss(lam, None if sampler is None else obj.sample(sampler.draw()))
        total.backward()
        opt.step()
        with torch.no_grad():
            lam.clamp_(0.0, s.lambda_max)
        losses.append(float(total.detach()))
        if progress:
            progress(step + 1, s.steps)
    with torch.no_grad():
        final, terms = obj.loss(lam)
    losses.append(float(final))
    coefs = {p: round(float(v), 6) for p, v in zip(obj.positions, lam.detach().cpu(), strict=True)}
    return FitResult(coefs, losses, time.perf_counter() - start, terms)


@dataclass(frozen=True)
class LayerScore:
    position: int
    safety_gain: float
    task_cost: float

    @property
    def score(self) -> float:
        return self.safety_gain - self.task_cost


def score_layers(model: PreTrainedModel, slices: Slices, batches: ShotBatches, *, beta: float = 1.0,
                 progress: Callable[[int, int], None] | None = None) -> list[LayerScore]:  # fmt: skip
    """Measured data-aware score of each slice: add it alone (λ = 1) and compare.

    ``safety_gain`` = drop in refusal CE on the harmful shots;
    ``task_cost`` = rise in β·task CE + benign CE (or KL). Score = gain − cost.
    """
    check_fits(model, slices)
    settings = FitSettings(beta=beta, gamma=0.0)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        # The unpatched model's terms and KL references are the same for every
        # slice: computed once, each slice then costs one forward.
        refs = kl_refs(model, batches)
        base = _Objective(model, {}, batches, settings, ref_logp=refs).terms(torch.zeros(0, device=dev))
        for i, pos in enumerate(sorted(slices)):
            obj = _Objective(model, {pos: slices[pos]}, batches, settings, ref_logp=refs)
            added = obj.terms(torch.ones(1, device=dev))
            gain = float(base["harmful"] - added["harmful"])
            cost = float(beta * (added["task"] - base["task"]) + (added["benign"] - base["benign"]))
            out.append(LayerScore(pos, gain, cost))
            if progress:
                progress(i + 1, len(slices))
    return out


@torch.no_grad()
def apply_in_memory(model: PreTrainedModel, slices: Slices, coefficients: dict[int, float]) -> None:
    """``W ← W + λ_p v`` in place (fp32 arithmetic, cast back to the weight's dtype)."""
    params = dict(model.named_parameters())
    for pos, lam in coefficients.items():
        for name, v in slices[pos].items():
            w = params[name]
            w.copy_((w.float() + lam * v.to(w.device)).to(w.dtype))

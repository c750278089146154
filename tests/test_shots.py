"""Shots for recalibration: stratified mini-batches and answer cuts, and the fit that uses them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from registry.api import Registry
from registry.evaluation.probes import load_probes
from registry.evaluation.textio import IGNORE_INDEX, load_model, load_tokenizer
from registry.method.recalibrate import FitSettings, encode_shots, fit_coefficients
from registry.method.shots import ShotSampler, _shares
from registry.toy.build import ToyWorld


@pytest.mark.parametrize(
    ("counts", "per_step"),
    [({"harmful": 24, "task": 16, "benign": 16}, 16), ({"harmful": 3, "task": 50, "benign": 1}, 8),
     ({"harmful": 5, "benign_kl": 5}, 3), ({"harmful": 7}, 4)],
)  # fmt: skip
def test_shares_split_the_step_in_proportion(counts: dict[str, int], per_step: int) -> None:
    share = _shares(counts, per_step)
    assert sum(share.values()) == max(per_step, len(counts))  # every kind is in every step
    for kind, n in share.items():
        assert 1 <= n <= counts[kind]
        assert abs(n - per_step * counts[kind] / sum(counts.values())) < 1.5


def test_sampler_draws_without_repeats_and_covers_every_shot_evenly() -> None:
    counts = {"harmful": 24, "task": 16, "benign": 16}
    sampler = ShotSampler(counts, 16, seed=3)
    seen: dict[str, Counter[int]] = {k: Counter() for k in counts}
    draws = [sampler.draw() for _ in range(24)]
    for d in draws:
        assert sum(len(v) for v in d.values()) == 16
        for kind, rows in d.items():
            assert len(rows) == len(set(rows)) and all(0 <= r < counts[kind] for r in rows)
            seen[kind].update(rows)
    for kind, c in seen.items():
        assert set(c) == set(range(counts[kind]))
        assert max(c.values()) - min(c.values()) <= 1  # epochs per kind: no shot is drawn twice as often
    assert [sampler.draw() for _ in range(3)] != [ShotSampler(counts, 16, seed=4).draw() for _ in range(3)]
    again = ShotSampler(counts, 16, seed=3)
    assert [again.draw() for _ in range(24)] == draws


def test_answer_tokens_cut_each_answer(quick_world: ToyWorld) -> None:
    task = quick_world.tasks[0]
    tok = load_tokenizer(quick_world.task_model(task))
    shots = load_probes(quick_world.shots[task])
    whole, cut = encode_shots(tok, shots), encode_shots(tok, shots, answer_tokens=2)
    for kind in ("harmful", "task", "benign"):
        assert len(whole.examples[kind]) == len(cut.examples[kind]) > 0
        for (ids, labels), (cids, clabels) in zip(whole.examples[kind], cut.examples[kind], strict=True):
            n = sum(x != IGNORE_INDEX for x in labels)
            assert sum(x != IGNORE_INDEX for x in clabels) == min(2, n)
            assert cids == ids[: len(cids)] and clabels == labels[: len(clabels)]
    assert any(len(c[0]) < len(w[0]) for w, c in zip(whole.examples["benign"], cut.examples["benign"], strict=True))


def test_a_mini_batched_fit_runs_each_step_on_a_sample(tmp_path: Path, quick_world: ToyWorld) -> None:
    """Each step's forward holds ``shots_per_step`` rows; with that at 0 (or above the count), every shot."""
    reg = Registry.open(tmp_path / "home")
    vec = reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    task = quick_world.tasks[0]
    model = load_model(quick_world.task_model(task))
    batches = encode_shots(load_tokenizer(quick_world.task_model(task)), load_probes(quick_world.shots[task]))
    total = sum(batches.counts().values())
    slices = reg.load_vector_slices(vec)
    rows: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    try:
        small = fit_coefficients(model, slices, batches, FitSettings(steps=6, shots_per_step=4, batch_size=64))
        assert rows[:6] == [4] * 6 and rows[-1] == total  # six sampled steps, then the final loss over all
        rows.clear()
        full = fit_coefficients(model, slices, batches, FitSettings(steps=6, shots_per_step=0, batch_size=64))
        assert set(rows) == {total}
        rows.clear()
        above = fit_coefficients(model, slices, batches, FitSettings(steps=6, shots_per_step=total, batch_size=64))
    finally:
        hook.remove()
    assert above.coefficients == full.coefficients  # no sampling: the same fit, step for step
    assert small.coefficients != full.coefficients
    assert all(0 <= v <= 2 for v in small.coefficients.values()) and len(small.losses) == 7
    assert torch.isfinite(torch.tensor(small.losses)).all()


def test_a_shared_prefix_runs_once_and_changes_nothing() -> None:
    """Rows that open with the same system turn: the prefix is computed once, and the hidden states and the
    gradient in λ are those of the batch's own forward."""
    from torch.func import functional_call
    from transformers import LlamaConfig, LlamaForCausalLM

    from registry.method.recalibrate import _hidden_states, shared_prefix

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(cfg).double().eval()  # float64: what is left to differ is not rounding
    head = [5, 9, 2, 7, 7, 1, 3, 8, 4, 6, 2, 9]
    rows = [head + [11, 12, 13], head + [20, 21, 22, 23, 24, 25], head + [30], head + [40, 41, 42, 43]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    assert shared_prefix(ids, mask) == len(head)
    other = ids.clone()
    other[2, 0] = 1
    assert shared_prefix(other, mask) == 0  # one row differs at its first token
    assert shared_prefix(ids, torch.where(torch.arange(width) == 5, 0, mask)) == 5  # padding ends it too
    inner = model.model
    names = [n for n, p in inner.named_parameters() if "layers.1." in n and p.dim() == 2]
    calls: list[int] = []
    hook = inner.embed_tokens.register_forward_hook(lambda _m, a, _o: calls.append(a[0].numel()))

    def run(fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        params = dict(inner.named_parameters())
        ov = {n: params[n].detach() + lam * 0.05 * torch.ones_like(params[n]) for n in names}
        h = fn(ov)
        (grad,) = torch.autograd.grad((h * mask.unsqueeze(-1)).pow(2).sum(), lam)
        return h, grad

    kw = {"input_ids": ids, "attention_mask": mask}
    plain, g_plain = run(lambda ov: functional_call(inner, ov, args=(), kwargs=kw).last_hidden_state)
    assert calls == [ids.numel()]
    shared, g_shared = run(lambda ov: _hidden_states(inner, ov, kw))
    hook.remove()
    assert calls[1:] == [len(head), 4 * (width - len(head))]  # the prefix once, then the rest of each row
    m = mask.bool()
    torch.testing.assert_close(shared[m], plain[m], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_shared, g_plain, rtol=1e-10, atol=1e-10)
    assert float(g_plain) != 0

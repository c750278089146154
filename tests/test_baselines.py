"""The Safe LoRA-style projection baseline, on real tensors with known geometry."""

from __future__ import annotations

import pytest
import torch

from registry.errors import InvalidInputError
from registry.method.baselines import apply_weights, safe_lora_projection


def _get(d: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    return d.__getitem__


def test_projects_only_dissimilar_updates_onto_the_safety_subspace() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, 1, generator=g)
    v_dir = u @ torch.randn(1, 6, generator=g)  # rank-1 safety direction: C projects onto span(u)
    aligned = {"a": torch.randn(8, 6, generator=g), "b": torch.randn(8, 6, generator=g), "bias": torch.randn(8)}
    along = 0.5 * v_dir  # an update inside the safety subspace: cos 1, kept
    across = torch.randn(8, 6, generator=g)  # a generic update: mostly outside it, projected
    target = {"a": aligned["a"] + along, "b": aligned["b"] + across, "bias": aligned["bias"]}
    vector = {"a": v_dir, "b": v_dir, "bias": torch.ones(8)}
    new, report = safe_lora_projection(["a", "b", "bias"], target=_get(target), aligned=_get(aligned),
                                       vector=_get(vector), threshold=0.5)
    assert report.projected == ("b",) and set(report.cosine) == {"a", "b"}
    assert report.cosine["a"] > 0.99 and report.cosine["b"] < 0.5
    p = u @ u.T / (u.T @ u)  # the orthogonal projector onto span(u)
    assert torch.allclose(p @ (new["b"] - aligned["b"]), new["b"] - aligned["b"], atol=1e-5)  # inside the subspace


def test_threshold_is_checked_and_weights_apply() -> None:
    with pytest.raises(InvalidInputError):
        safe_lora_projection([], target=_get({}), aligned=_get({}), vector=_get({}), threshold=1.5)
    model = torch.nn.Linear(3, 2)
    apply_weights(model, {"weight": torch.zeros(2, 3)})
    assert float(model.weight.abs().sum()) == 0.0

"""Baselines the method is measured against, on the same targets (DESIGN.md §1).

* RESTA (arXiv 2402.11746): ``θ = θ_T + γ·v`` on every tensor the vector
  carries, one γ for all (γ = 1 in the paper) — the ``uniform`` coefficients
  of ``patch``, so it needs nothing here.
* Safe LoRA-style projection (arXiv 2405.16833): per weight matrix, project
  the task's update ``ΔW = W_T − W_A`` (target minus aligned) onto the safety
  subspace of ``V`` (the safety vector's slice, ``aligned − degraded``) with
  ``C = V Vᵀ / ‖V‖_F``; where the projected update is *dissimilar* from the
  original (cosine below ``threshold``), the layer is reset to
  ``W_A + C ΔW``. Safe LoRA does this to LoRA updates; here it acts on the
  full fine-tune delta, which is what a full fine-tune gives.

Both return new weights for the named tensors; callers patch a loaded model
in memory (:func:`apply_weights`) or write them with the patcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..errors import IncompatibleError, InvalidInputError

Getter = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class ProjectionReport:
    """Per tensor: the cosine between ``ΔW`` and its projection, and whether it was projected."""

    cosine: dict[str, float]
    projected: tuple[str, ...]


def safe_lora_projection(names: Iterable[str], *, target: Getter, aligned: Getter, vector: Getter,
                         threshold: float = 0.35) -> tuple[dict[str, torch.Tensor], ProjectionReport]:  # fmt: skip
    """New weights for the 2-D tensors whose task update is dissimilar from its safety projection.

    Args:
        names: tensor names to consider (2-D weights; others are skipped).
        target, aligned, vector: read a tensor of the task model, the aligned
            model, and the safety vector (``aligned − degraded``) by name.
        threshold: project where cos(ΔW, CΔW) < threshold (Safe LoRA's τ).

    Returns:
        {name: new weight in the target's dtype} for projected tensors, and the report.

    Raises:
        InvalidInputError: threshold outside [0, 1].
        IncompatibleError: shapes disagree.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must lie in [0, 1], got {threshold}")
    out: dict[str, torch.Tensor] = {}
    cosine: dict[str, float] = {}
    for name in names:
        v = vector(name).float()
        if v.dim() != 2:
            continue
        w_t, w_a = target(name), aligned(name)
        if w_t.shape != v.shape or w_a.shape != v.shape:
            raise IncompatibleError(f"{name}: shapes of target, aligned and vector disagree",
                                    [f"{list(w_t.shape)}, {list(w_a.shape)}, {list(v.shape)}"])  # fmt: skip
        delta = w_t.float() - w_a.float()
        norm = torch.linalg.matrix_norm(v)
        if float(norm) == 0.0 or float(torch.linalg.matrix_norm(delta)) == 0.0:
            continue
        projected = (v @ (v.T @ delta)) / norm  # C ΔW with C = V Vᵀ / ‖V‖_F, without forming C
        cos = float(torch.nn.functional.cosine_similarity(delta.reshape(1, -1), projected.reshape(1, -1)))
        cosine[name] = cos
        if cos < threshold:
            out[name] = (w_a.float() + projected).to(w_t.dtype)
    return out, ProjectionReport(cosine, tuple(sorted(out)))


@torch.no_grad()
def apply_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` into the model's parameters of the same names, in place."""
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise IncompatibleError("weights name tensors the model does not have", missing[:5])
    for name, w in weights.items():
        params[name].copy_(w.to(params[name].device, params[name].dtype))

"""Exporting a vector's coefficient-scaled selected layers as a PEFT LoRA adapter (see :mod:`.peft`).

Every selected block's slice ``λ_l · v_l`` is cut, tensor by tensor, into a
rank-``r`` factorisation by truncated SVD; the folder is written beside its
destination and published atomically (:mod:`registry.store.atomic`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..catalog import models as m
from ..catalog.records import LayerRecord, VectorRecord
from ..catalog.service import Catalog
from ..checkpoints.family import family_key
from ..checkpoints.reader import Checkpoint
from ..errors import AlreadyExistsError, IncompatibleError, InvalidInputError
from ..evaluation.probes import Probe
from ..method.pipeline import Recalibrator, layer_key
from ..method.vectors import Vectors
from ..store.atomic import is_adapter_folder, prepare_output, publish
from ..store.blobs import fsync_path
from ._lora_config import ADAPTER_CONFIG
from .peft import (
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    SIDECAR,
    TARGET_KINDS,
    ModuleExport,
    PeftExport,
    module_kinds,
)
from .peft_check import KL_TOLERANCE, behaviour_gap

_F64_MAX_NUMEL = 1 << 24


def export_peft(catalog: Catalog, vectors: Vectors, recalibrator: Recalibrator, ref: str, out: str | Path, *,
                target: str | Path | None = None,
                base: str | Path | None = None, rank: int | None = None, energy: float | None = None,
                coefficients: Mapping[str, float] | None = None, skip_unsupported: bool = False,
                force: bool = False, lossy: bool = False) -> PeftExport:  # fmt: skip
    """Write a vector's coefficient-scaled selected layers as a PEFT LoRA adapter.

    Args:
        catalog: the vector's source checkpoints (to read module types from).
        vectors: the vector and its slices.
        recalibrator: the fit check and the cached recalibrations.
        ref: vector name or hash prefix.
        out: output folder (must not exist unless ``force``).
        target: checkpoint folder the adapter is for; its latest cached
            recalibration supplies the coefficients. Without it: λ = 1 on the
            vector's selected layers.
        base: any checkpoint folder of the family, only to read module types
            (default: ``target``, else the vector's aligned/degraded checkpoint).
        rank: fixed rank for every module (capped at its full rank); overrides ``energy``.
        energy: keep the smallest rank whose singular values hold this share of Σσ².
            Default (None): the smallest of 0.99, 0.999, 0.9999 and the numerical
            rank whose adapter *behaves* like the patch on the vector's shots
            (:mod:`.peft_check`); with no shots recorded, the numerical rank.
        coefficients: explicit ``{layer key: λ}``; overrides the two defaults above.
        skip_unsupported: leave out tensors that cannot be LoRA targets (listed
            in ``skipped``) instead of refusing.
        force: replace an existing ``out``.
        lossy: write an adapter whose behaviour check fails (a fixed ``rank`` or
            ``energy`` too small), instead of refusing.

    Returns:
        The export, with per-module rank, relative reconstruction error and the
        behaviour check (``behaviour``: KL to the patch on the shots, tolerance).

    Raises:
        InvalidInputError: bad rank/energy, no cached recalibration, nothing selected,
            or a fixed rank/energy whose adapter does not behave like the patch (without ``lossy``).
        IncompatibleError: the target or base does not fit, or a tensor cannot be a LoRA target.
        AlreadyExistsError: ``out`` exists and ``force`` is false (or is not an adapter folder).
    """
    if rank is not None and rank < 1:
        raise InvalidInputError(f"--rank must be at least 1, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise InvalidInputError(f"--energy must be in (0, 1], got {energy}")
    out_path = Path(out)
    if out_path.exists() and not force:
        raise AlreadyExistsError(f"{out_path} already exists; choose another OUT or pass --force")
    vec = vectors.get(ref)
    target_ck = Checkpoint(target) if target is not None else None
    if target_ck is not None:
        recalibrator.fit_check(vec, target_ck)
    target_hash = target_ck.content_hash() if target_ck is not None else None
    coefs = _coefficients(recalibrator, vec, target_hash, str(target), coefficients)
    layers = [lay for lay in vec.layers if layer_key(lay.index) in coefs]
    config_ck = _config_checkpoint(catalog, vec, target_ck, base)
    kinds = module_kinds(config_ck, [n for lay in layers for n in lay.tensor_names])
    skipped = [f"{n}: {k}" for n, k in kinds.items() if k not in TARGET_KINDS]
    if skipped and not skip_unsupported:
        raise IncompatibleError(f"vector {vec.name} carries tensors that cannot be LoRA targets "
                                "(pass --skip-unsupported to leave them out)", skipped)  # fmt: skip
    if len({k for k in kinds.values() if k in TARGET_KINDS}) > 1:
        raise IncompatibleError("the vector mixes nn.Linear and Conv1D targets; one PEFT adapter "
                                "has a single fan_in_fan_out setting", sorted(kinds))  # fmt: skip
    shots = _check_shots(catalog, vec, target_hash)
    fixed = rank is not None or energy is not None
    levels: list[float | None] = [energy] if fixed else (list(AUTO_ENERGIES) if shots else [1.0])
    model_dir = (target_ck or config_ck).path
    for level in levels:
        tensors, modules, exact, approx = _factor_layers(vectors, vec, layers, coefs, kinds, rank=rank,
                                                         energy=1.0 if level is None else level)  # fmt: skip
        gap = behaviour_gap(model_dir, shots, exact, approx) if shots and modules else None
        if gap is None or gap <= KL_TOLERANCE:
            break
    behaviour = {"checked": gap is not None, "kl": gap, "tolerance": KL_TOLERANCE, "shots": len(shots),
                 "energy": level if rank is None else None, "within_tolerance": gap is None or gap <= KL_TOLERANCE}
    if gap is not None and gap > KL_TOLERANCE and not lossy:
        raise InvalidInputError(
            f"the adapter at {'rank ' + str(rank) if rank else 'energy ' + str(energy)} does not behave like the "
            f"patch: KL {gap:.4f} > {KL_TOLERANCE} nats/token on {len(shots)} shots; drop --rank/--energy "
            "(the default picks a rank that does) or pass --lossy to write it anyway"
        )
    if not modules:
        raise IncompatibleError(f"vector {vec.name}: no tensor of the chosen layers can be a LoRA target", skipped)
    r = _common_rank(modules)
    config = _adapter_config(modules, r, str(config_ck.path))
    result = PeftExport(str(out_path.resolve()), vec.name, vec.hash, target_hash, coefs, r, modules, skipped,
                        behaviour=behaviour)  # fmt: skip
    sidecar = {"safegene": {"vector": vec.name, "hash": vec.hash, "family": vec.family, "target": target_hash,
                            "rank": rank, "energy": behaviour["energy"]},
               **result.to_json()}  # fmt: skip
    _write_folder(out_path, {ADAPTER_CONFIG: _dumps(config), ADAPTER_WEIGHTS: st_save(tensors),
                             SIDECAR: _dumps(sidecar)}, force=force, lease_dir=vectors.store.tmp_dir)  # fmt: skip
    return result


AUTO_ENERGIES = (0.99, 0.999, 0.9999, 1.0)
Deltas = dict[str, torch.Tensor]


def _factor_layers(vectors: Vectors, vec: VectorRecord, layers: list[LayerRecord], coefs: dict[str, float],
                   kinds: dict[str, str], *, rank: int | None,
                   energy: float) -> tuple[Deltas, list[ModuleExport], Deltas, Deltas]:  # fmt: skip
    """LoRA tensors and module facts, plus the exact and the adapter's deltas (checkpoint layout)."""
    tensors: Deltas = {}
    modules: list[ModuleExport] = []
    exact: Deltas = {}
    approx: Deltas = {}
    for lay in layers:  # one slice in memory at a time
        lam, slice_ = coefs[layer_key(lay.index)], vectors.load_slices(vec, positions=[lay.position])[lay.position]
        for name in sorted(slice_):
            if kinds[name] not in TARGET_KINDS:
                continue
            conv = kinds[name] == "conv1d"
            mat = lam * slice_[name]
            a, b, info = _factorize(mat.T if conv else mat, rank=rank, energy=energy)
            mod = name[: -len(".weight")]
            tensors[f"{PEFT_PREFIX}{mod}.lora_A.weight"] = a
            tensors[f"{PEFT_PREFIX}{mod}.lora_B.weight"] = b
            modules.append(ModuleExport(mod, name, lay.index, lam, fan_in_fan_out=conv, **info))
            exact[name] = mat
            approx[name] = (b @ a).T if conv else b @ a
    return tensors, modules, exact, approx


def _check_shots(catalog: Catalog, vec: VectorRecord, target_hash: str | None) -> list[Probe]:
    """The shots to check behaviour on: the target's latest recalibration shots, else the vector's scoring shots."""

    def q(session: Session) -> str | None:
        if target_hash is not None:
            shots_hash = session.scalar(
                select(m.Recalibration.shots_hash).join(m.Vector)
                .where(m.Vector.hash == vec.hash, m.Recalibration.target_hash == target_hash)
                .order_by(m.Recalibration.created_at.desc(), m.Recalibration.id.desc()).limit(1))  # fmt: skip
            if shots_hash is not None:
                return session.scalar(select(m.ProbeSet.content).where(m.ProbeSet.hash == shots_hash))
        scored = next((lay.probe_set for lay in vec.layers if lay.probe_set), None)
        return session.scalar(select(m.ProbeSet.content).where(m.ProbeSet.hash == scored)) if scored else None

    content = catalog.read(q)
    if not content:
        return []
    return [Probe(prompt=o["prompt"], kind=o["kind"], response=o.get("response")) for o in json.loads(content)]


def _coefficients(recalibrator: Recalibrator, vec: VectorRecord, target_hash: str | None, target: str,
                  given: Mapping[str, float] | None) -> dict[str, float]:  # fmt: skip
    """Explicit λ, else the target's latest cached recalibration, else λ = 1 on selected layers."""
    if given is not None:
        coefs = {str(k): float(v) for k, v in given.items()}
    elif target_hash is not None:
        cached = recalibrator.latest_coefficients(vec, target_hash)
        if cached is None:
            raise InvalidInputError(
                f"no cached recalibration of {vec.name} for target {target_hash[:12]}: run "
                f"`safegene recalibrate {target} --vector {vec.name} --shots FILE` first, or export without --target"
            )
        coefs = cached
    else:
        coefs = {layer_key(lay.index): 1.0 for lay in vec.layers if lay.selected}
    if not coefs or not all(math.isfinite(v) for v in coefs.values()):
        raise InvalidInputError(f"vector {vec.name}: no layers selected (or a non-finite coefficient); "
                                "run `safegene vector score` or pass --target with a recalibration")  # fmt: skip
    unknown = sorted(set(coefs) - {layer_key(lay.index) for lay in vec.layers})
    if unknown:
        raise InvalidInputError(f"coefficients name layers {unknown} that vector {vec.name} does not carry")
    return coefs


def _config_checkpoint(catalog: Catalog, vec: VectorRecord, target: Checkpoint | None,
                       base: str | Path | None) -> Checkpoint:  # fmt: skip
    if base is not None:
        ck = Checkpoint(base)
        if family_key(ck.config, ck.names()).id != vec.family:
            raise IncompatibleError(f"--base {base} is not of vector {vec.name}'s family {vec.family[:12]}")
        return ck
    if target is not None:
        return target
    for ref in (vec.aligned, vec.degraded):
        if ref:
            path = Path(catalog.get_model(ref).path)
            if (path / "config.json").is_file():
                return Checkpoint(path)
    raise InvalidInputError(
        f"vector {vec.name} has no source checkpoint on disk to read module types from; "
        "pass --base DIR (any checkpoint of its family) or --target DIR"
    )


def _factorize(mat: torch.Tensor, *, rank: int | None, energy: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Truncated SVD ``mat ≈ B·A``: (A [r, in], B [out, r], facts)."""
    mat = mat.to(torch.float32)
    # float64 keeps full-rank exports exact to fp32 rounding; very large matrices use float32 for speed.
    work = mat.double() if mat.numel() <= _F64_MAX_NUMEL else mat
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    full = int(s.numel())
    sq = s.pow(2)
    total = float(sq.sum())
    if rank is not None:
        r = min(rank, full)
    elif total == 0.0:
        r = 1
    elif energy >= 1.0:  # the numerical rank: what fp32 data can tell apart from rounding noise
        tol = float(s[0]) * max(mat.shape) * torch.finfo(torch.float32).eps
        r = max(1, int((s > tol).sum()))
    else:
        cum = torch.cumsum(sq, 0) / total
        r = min(full, int(torch.searchsorted(cum, torch.tensor([energy], dtype=cum.dtype)).item()) + 1)
    root = s[:r].sqrt()
    a = (root[:, None] * vh[:r]).to(torch.float32).contiguous()
    b = (u[:, :r] * root[None, :]).to(torch.float32).contiguous()
    norm = float(torch.linalg.matrix_norm(mat))
    err = float(torch.linalg.matrix_norm(b @ a - mat)) / norm if norm else 0.0
    kept = float(sq[:r].sum()) / total if total else 1.0
    return a, b, {"rank": r, "full_rank": full, "energy": kept, "relative_error": err}


def _common_rank(modules: list[ModuleExport]) -> int:
    counts = Counter(mod.rank for mod in modules)
    return max(counts, key=lambda r: (counts[r], r))


def _adapter_config(modules: list[ModuleExport], r: int, base_name: str) -> dict[str, Any]:
    pattern = {mod.module: mod.rank for mod in modules if mod.rank != r}
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(mod.module for mod in modules), "lora_dropout": 0.0,
        "fan_in_fan_out": any(mod.fan_in_fan_out for mod in modules), "bias": "none",
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "revision": None,
    }  # fmt: skip


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_folder(out: Path, files: dict[str, bytes], *, force: bool, lease_dir: Path | None) -> None:
    """Write ``files`` into a temp folder beside ``out``, fsync, then publish it under its name."""
    tmp, lease = prepare_output(out, force=force, lease_dir=lease_dir, replaceable=is_adapter_folder,
                                what="PEFT adapter folder")  # fmt: skip
    try:
        for fname, data in files.items():
            with open(tmp / fname, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_path(tmp)
        publish(tmp, out, force=force, replaceable=is_adapter_folder, what="PEFT adapter folder")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if lease is not None:
            lease.unlink(missing_ok=True)

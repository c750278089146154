"""Safety vectors as PEFT LoRA adapters, both ways.

Export: every selected block's coefficient-scaled slice ``λ_l · v_l`` is cut,
tensor by tensor, into a rank-``r`` factorisation by truncated SVD
(``M ≈ B·A`` with ``B = U_r √S_r`` and ``A = √S_r V_rᵀ``); the rank of each
module is the smallest that keeps ``energy`` of ``Σ σ²`` (``energy=1``: the numerical
rank, exact to fp32 rounding), or a fixed ``rank``.
``lora_alpha`` equals each module's rank so that PEFT's scaling is 1. The
written folder::

    OUT/
    ├── adapter_config.json          PEFT LoraConfig (r, lora_alpha, target_modules,
    │                                rank_pattern / alpha_pattern where ranks differ)
    ├── adapter_model.safetensors    base_model.model.<module>.lora_A.weight / lora_B.weight
    └── safegene_export.json         vector, coefficients, per-module rank and relative error

Only 2-D weights of ``nn.Linear`` (and GPT-2 style ``Conv1D``, whose weight is
stored ``[in, out]``: it is exported transposed with ``fan_in_fan_out``) can be
LoRA targets. Which module a tensor belongs to is read from the model class the
family's config names, instantiated on the meta device (no weights are read).

Import: a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``;
pickle ``adapter_model.bin`` is refused) becomes a vector with
``v = B·A·scaling`` per module (``scaling = lora_alpha / r``, or
``/ √r`` with ``use_rslora``; ``rank_pattern`` / ``alpha_pattern`` honoured as
PEFT matches them), stored one slice per block like an extracted vector.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..api import Registry
from ..catalog import models as m
from ..catalog.queries import check_name, get_or_create_family, resolve_vector
from ..catalog.records import VectorRecord
from ..checkpoints.family import family_key, layer_of, manifest_hash
from ..checkpoints.reader import Checkpoint, read_header
from ..errors import (
    AlreadyExistsError,
    IncompatibleError,
    InvalidCheckpointError,
    InvalidInputError,
)
from ..method.extract import payload_skip, plan_slices, vector_hash
from ..method.pipeline import layer_key
from ..store.blobs import fsync_path, sha256_hex
from ._lora_config import ADAPTER_CONFIG, LoraSettings, read_lora_config

ADAPTER_WEIGHTS = "adapter_model.safetensors"
SIDECAR = "safegene_export.json"
PEFT_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^base_model\.model\.(?P<module>[A-Za-z0-9_.\-]+)\.lora_(?P<ab>[AB])\.weight$")
_F64_MAX_NUMEL = 1 << 24


@dataclass(frozen=True)
class ModuleExport:
    """One LoRA target of an export."""

    module: str
    tensor: str
    layer: int | None
    coefficient: float
    rank: int
    full_rank: int
    energy: float
    relative_error: float
    fan_in_fan_out: bool


@dataclass(frozen=True)
class PeftExport:
    """What :func:`export_peft` wrote."""

    path: str
    vector: str
    hash: str
    target: str | None
    coefficients: dict[str, float]
    r: int
    modules: list[ModuleExport]
    skipped: list[str] = field(default_factory=list)
    format: str = "peft"

    @property
    def errors(self) -> dict[str, float]:
        """Relative Frobenius reconstruction error per module."""
        return {mod.module: mod.relative_error for mod in self.modules}

    @property
    def max_relative_error(self) -> float:
        return max((mod.relative_error for mod in self.modules), default=0.0)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(errors=self.errors, max_relative_error=self.max_relative_error)
        return out


# --------------------------------------------------------------------------- module kinds


def module_kinds(ckpt: Checkpoint, tensor_names: Iterable[str]) -> dict[str, str]:
    """Kind of the module owning each weight: ``linear``, ``conv1d`` or the reason it is neither.

    The model class named by the config is built on the meta device, so this
    reads no weights. Remote code is never run.

    Raises:
        InvalidCheckpointError: transformers cannot build the model from the config.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        cfg = AutoConfig.from_pretrained(str(ckpt.path), trust_remote_code=False)
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        with torch.device("meta"):
            model = cls(cfg) if isinstance(cls, type) else AutoModelForCausalLM.from_config(cfg)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - transformers raises many unrelated types here
        raise InvalidCheckpointError(ckpt.path, f"transformers cannot build this model's modules: {exc}") from None
    out: dict[str, str] = {}
    for name in tensor_names:
        if not name.endswith(".weight"):
            out[name] = "not a module weight"
            continue
        try:
            mod = model.get_submodule(name[: -len(".weight")])
        except AttributeError:
            out[name] = f"no such module in {type(model).__name__}"
            continue
        if isinstance(mod, torch.nn.Linear):
            out[name] = "linear"
        elif isinstance(mod, Conv1D):
            out[name] = "conv1d"
        else:
            out[name] = f"{type(mod).__name__} is not nn.Linear"
    return out


# --------------------------------------------------------------------------- export


def export_peft(reg: Registry, ref: str, out: str | Path, *, target: str | Path | None = None,
                base: str | Path | None = None, rank: int | None = None, energy: float = 0.99,
                coefficients: Mapping[str, float] | None = None, skip_unsupported: bool = False,
                force: bool = False) -> PeftExport:  # fmt: skip
    """Write a vector's coefficient-scaled selected layers as a PEFT LoRA adapter.

    Args:
        reg: the registry.
        ref: vector name or hash prefix.
        out: output folder (must not exist unless ``force``).
        target: checkpoint folder the adapter is for; its latest cached
            recalibration supplies the coefficients. Without it: λ = 1 on the
            vector's selected layers.
        base: any checkpoint folder of the family, only to read module types
            (default: ``target``, else the vector's aligned/degraded checkpoint).
        rank: fixed rank for every module (capped at its full rank); overrides ``energy``.
        energy: keep the smallest rank whose singular values hold this share of Σσ².
        coefficients: explicit ``{layer key: λ}``; overrides the two defaults above.
        skip_unsupported: leave out tensors that cannot be LoRA targets (listed
            in ``skipped``) instead of refusing.
        force: replace an existing ``out``.

    Returns:
        The export, with per-module rank and relative reconstruction error.

    Raises:
        InvalidInputError: bad rank/energy, no cached recalibration, nothing selected.
        IncompatibleError: the target or base does not fit, or a tensor cannot be a LoRA target.
        AlreadyExistsError: ``out`` exists and ``force`` is false.
    """
    if rank is not None and rank < 1:
        raise InvalidInputError(f"--rank must be at least 1, got {rank}")
    if not 0.0 < energy <= 1.0:
        raise InvalidInputError(f"--energy must be in (0, 1], got {energy}")
    out_path = Path(out)
    if out_path.exists() and not force:
        raise AlreadyExistsError(f"{out_path} already exists; choose another OUT or pass --force")
    vec = reg.get_vector(ref)
    target_ck = Checkpoint(target) if target is not None else None
    if target_ck is not None:
        reg._fit_check(vec, target_ck)
    target_hash = target_ck.content_hash() if target_ck is not None else None
    coefs = _coefficients(reg, vec, target_hash, str(target), coefficients)
    layers = [lay for lay in vec.layers if layer_key(lay.index) in coefs]
    config_ck = _config_checkpoint(reg, vec, target_ck, base)
    kinds = module_kinds(config_ck, [n for lay in layers for n in lay.tensor_names])
    skipped = [f"{n}: {k}" for n, k in kinds.items() if k not in ("linear", "conv1d")]
    if skipped and not skip_unsupported:
        raise IncompatibleError(f"vector {vec.name} carries tensors that cannot be LoRA targets "
                                "(pass --skip-unsupported to leave them out)", skipped)  # fmt: skip
    if len({k for k in kinds.values() if k in ("linear", "conv1d")}) > 1:
        raise IncompatibleError("the vector mixes nn.Linear and Conv1D targets; one PEFT adapter "
                                "has a single fan_in_fan_out setting", sorted(kinds))  # fmt: skip
    tensors: dict[str, torch.Tensor] = {}
    modules: list[ModuleExport] = []
    for lay in layers:  # one slice in memory at a time
        lam, slice_ = coefs[layer_key(lay.index)], reg.load_vector_slices(vec, positions=[lay.position])[lay.position]
        for name in sorted(slice_):
            if kinds[name] not in ("linear", "conv1d"):
                continue
            conv = kinds[name] == "conv1d"
            mat = lam * slice_[name]
            a, b, info = _factorize(mat.T if conv else mat, rank=rank, energy=energy)
            mod = name[: -len(".weight")]
            tensors[f"{PEFT_PREFIX}{mod}.lora_A.weight"] = a
            tensors[f"{PEFT_PREFIX}{mod}.lora_B.weight"] = b
            modules.append(ModuleExport(mod, name, lay.index, lam, fan_in_fan_out=conv, **info))
    if not modules:
        raise IncompatibleError(f"vector {vec.name}: no tensor of the chosen layers can be a LoRA target", skipped)
    r = _common_rank(modules)
    config = _adapter_config(modules, r, str(config_ck.path))
    result = PeftExport(str(out_path.resolve()), vec.name, vec.hash, target_hash, coefs, r, modules, skipped)
    sidecar = {"safegene": {"vector": vec.name, "hash": vec.hash, "family": vec.family, "target": target_hash,
                            "rank": rank, "energy": None if rank else energy},
               **result.to_json()}  # fmt: skip
    _write_folder(out_path, {ADAPTER_CONFIG: _dumps(config), ADAPTER_WEIGHTS: st_save(tensors),
                             SIDECAR: _dumps(sidecar)}, force=force)  # fmt: skip
    return result


def _coefficients(reg: Registry, vec: VectorRecord, target_hash: str | None, target: str,
                  given: Mapping[str, float] | None) -> dict[str, float]:  # fmt: skip
    """Explicit λ, else the target's latest cached recalibration, else λ = 1 on selected layers."""
    if given is not None:
        coefs = {str(k): float(v) for k, v in given.items()}
    elif target_hash is not None:
        coefs = _cached_coefficients(reg, vec, target_hash, target)
    else:
        coefs = {layer_key(lay.index): 1.0 for lay in vec.layers if lay.selected}
    if not coefs or not all(math.isfinite(v) for v in coefs.values()):
        raise InvalidInputError(f"vector {vec.name}: no layers selected (or a non-finite coefficient); "
                                "run `safegene vector score` or pass --target with a recalibration")  # fmt: skip
    unknown = sorted(set(coefs) - {layer_key(lay.index) for lay in vec.layers})
    if unknown:
        raise InvalidInputError(f"coefficients name layers {unknown} that vector {vec.name} does not carry")
    return coefs


def _cached_coefficients(reg: Registry, vec: VectorRecord, target_hash: str, target: str) -> dict[str, float]:
    def q(session: Session) -> str | None:
        row = resolve_vector(session, vec.hash)
        return session.scalar(
            select(m.Recalibration.coefficients_json)
            .where(m.Recalibration.vector_id == row.id, m.Recalibration.target_hash == target_hash)
            .order_by(m.Recalibration.created_at.desc(), m.Recalibration.id.desc()).limit(1))  # fmt: skip

    found = reg.read(q)
    if found is None:
        raise InvalidInputError(
            f"no cached recalibration of {vec.name} for target {target_hash[:12]}: run "
            f"`safegene recalibrate {target} --vector {vec.name} --shots FILE` first, or export without --target"
        )
    return {str(k): float(v) for k, v in json.loads(found).items()}


def _config_checkpoint(reg: Registry, vec: VectorRecord, target: Checkpoint | None,
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
            path = Path(reg.get_model(ref).path)
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


def _write_folder(out: Path, files: dict[str, bytes], *, force: bool) -> None:
    """Write ``files`` into a temp folder beside ``out``, fsync, then rename it into place."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for fname, data in files.items():
            with open(tmp / fname, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_path(tmp)
        if out.exists() and force:
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_path(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- import


def _adapter_modules(weights: Path) -> list[str]:
    """Module paths of a LoRA weights file; every key must be a lora_A/lora_B weight, in pairs."""
    tensors, _ = read_header(weights)
    found: dict[str, set[str]] = {}
    for key in tensors:
        hit = _KEY_RE.match(key)
        if hit is None:
            raise InvalidInputError(f"{weights}: key {key[:120]!r} is not a LoRA weight "
                                    f"({PEFT_PREFIX}<module>.lora_A.weight / lora_B.weight)")  # fmt: skip
        found.setdefault(hit["module"], set()).add(hit["ab"])
    unpaired = sorted(mod for mod, ab in found.items() if ab != {"A", "B"})
    if unpaired:
        raise InvalidInputError(f"{weights}: modules without both lora_A and lora_B: {unpaired[:5]}")
    if not found:
        raise InvalidInputError(f"{weights}: holds no LoRA weights")
    return sorted(found)


def import_peft(reg: Registry, path: str | Path, *, name: str, base: str | Path) -> VectorRecord:
    """Register a PEFT LoRA adapter folder as a vector (``v = B·A·scaling`` per module).

    Args:
        reg: the registry.
        path: adapter folder with adapter_config.json and adapter_model.safetensors.
        name: catalog name of the new vector.
        base: the base checkpoint folder the adapter is for (family and shapes).

    Returns:
        The vector record (aligned/degraded null, ``meta["source"] == "peft"``).

    Raises:
        InvalidInputError: malformed config or weights, pickle-only adapter, NaN/Inf.
        IncompatibleError: a module is missing from the base, has another shape, or is
            not nn.Linear/Conv1D.
        AlreadyExistsError: the name is taken by another vector.
    """
    check_name(name, "vector name")
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: not a folder; a PEFT adapter is a folder")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        if pickles:
            raise InvalidInputError(f"{folder}: only pickle weights ({', '.join(sorted(pickles))}); safegene never "
                                    "unpickles: re-save the adapter with safe_serialization=True")  # fmt: skip
        raise InvalidInputError(f"{folder}: no {ADAPTER_WEIGHTS}")
    lora = read_lora_config(folder / ADAPTER_CONFIG)
    try:
        modules = _adapter_modules(weights)
    except InvalidCheckpointError as exc:
        raise InvalidInputError(f"{weights}: not a valid safetensors file ({exc.reason})") from None
    base_ck = Checkpoint(base)
    key = family_key(base_ck.config, base_ck.names())
    missing = [f"{mod}.weight: not in the base" for mod in modules if f"{mod}.weight" not in base_ck.tensors]
    if missing:
        raise IncompatibleError(f"adapter {folder} does not fit base {base_ck.path}", missing)
    kinds = module_kinds(base_ck, [f"{mod}.weight" for mod in modules])
    bad = [f"{n}: {k}" for n, k in kinds.items() if k not in ("linear", "conv1d")]
    if bad:
        raise IncompatibleError("only nn.Linear / Conv1D modules can carry an imported LoRA delta", bad)
    names = [f"{mod}.weight" for mod in modules]
    scope = "blocks" if all(layer_of(n) for n in names) else "all"
    plan = plan_slices(names, scope)
    # Pass 1 validates every block (and gives the vector hash) without writing; pass 2 stores.
    digest = vector_hash([(label, sha256_hex(payload)) for _, label, _, payload, _ in
                          _payloads(weights, plan, lora, base_ck, kinds)])  # fmt: skip
    if reg.read(lambda s: s.scalar(select(m.Vector.hash).where(m.Vector.name == name))) == digest:
        return reg.get_vector(digest)  # the same adapter imported again under the same name
    reg._check_vector_name_free(name)
    layers = [{"position": pos, "index": idx, "label": label, "names": members, "norm": norm,
               "blob": reg.store.put(payload, skip=payload_skip(payload), width=4)}
              for pos, (idx, label, members, payload, norm) in enumerate(_payloads(weights, plan, lora, base_ck, kinds))]  # fmt: skip
    base_hash = base_ck.content_hash()
    meta = {"source": "peft", "scope": scope, "num_blocks": key.num_layers, "max_abs_error": 0.0,
            "shapes": {n: list(base_ck.tensors[n].shape) for n in names}, "source_dtype": "f32",
            "peft": {"r": lora.r, "lora_alpha": lora.lora_alpha, "use_rslora": lora.use_rslora,
                     "rank_pattern": lora.rank_pattern, "alpha_pattern": lora.alpha_pattern,
                     "modules": modules},
            "base": {"hash": base_hash, "path": str(base_ck.path)}}  # fmt: skip
    mhash, base_names = manifest_hash(base_ck.manifest()), base_ck.names()

    def prepare(session: Session) -> None:
        get_or_create_family(session, key, mhash, base_names)

    return reg._register_vector(name, key.id, None, None, "fp32", scope, layers, meta, prepare=prepare,
                                event_extra={"source": "peft", "base": base_hash})  # fmt: skip


def _payloads(weights: Path, plan: list[tuple[int | None, str, list[str]]], lora: LoraSettings, base: Checkpoint,
              kinds: dict[str, str]) -> Iterator[tuple[int | None, str, list[str], bytes, float]]:  # fmt: skip
    """One slice payload per block (only that block's deltas in memory)."""
    with safe_open(str(weights), framework="pt", device="cpu") as fh:
        for idx, label, members in plan:
            deltas = {n: _delta(fh, weights, n, lora, base.tensors[n].shape, kinds[n] == "conv1d") for n in members}
            norm = math.sqrt(sum(float((t ** 2).sum()) for t in deltas.values()))
            yield idx, label, members, st_save(deltas), norm


def _delta(fh: Any, weights: Path, name: str, lora: LoraSettings, shape: tuple[int, ...], conv: bool) -> torch.Tensor:
    mod = name[: -len(".weight")]
    r, scale = lora.scaling(mod)
    rows, cols = (shape[1], shape[0]) if conv else (shape[0], shape[1])  # Conv1D weights are [in, out]
    a_shape = list(fh.get_slice(f"{PEFT_PREFIX}{mod}.lora_A.weight").get_shape())
    b_shape = list(fh.get_slice(f"{PEFT_PREFIX}{mod}.lora_B.weight").get_shape())
    if len(shape) != 2 or a_shape != [r, cols] or b_shape != [rows, r]:  # checked before any product is formed
        raise IncompatibleError(f"{mod}: lora_A {a_shape} / lora_B {b_shape} do not fit the base weight "
                                f"{list(shape)} at the configured rank {r}")  # fmt: skip
    a: torch.Tensor = fh.get_tensor(f"{PEFT_PREFIX}{mod}.lora_A.weight").to(torch.float32)
    b: torch.Tensor = fh.get_tensor(f"{PEFT_PREFIX}{mod}.lora_B.weight").to(torch.float32)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InvalidInputError(f"{weights}: {mod} has NaN or Inf values")
    delta = (b @ a) * scale
    delta = delta.T.contiguous() if conv else delta
    if not torch.isfinite(delta).all():
        raise InvalidInputError(f"{weights}: {mod}'s delta overflows (NaN or Inf)")
    return delta

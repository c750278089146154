"""Importing a PEFT LoRA adapter folder as a vector: ``v = B·A·scaling`` per module (see :mod:`.peft`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..catalog import models as m
from ..catalog.queries import check_name, get_or_create_family
from ..catalog.records import VectorRecord
from ..catalog.service import Catalog
from ..checkpoints.family import family_key, layer_of, manifest_hash
from ..checkpoints.reader import Checkpoint, read_header
from ..errors import IncompatibleError, InvalidCheckpointError, InvalidInputError
from ..method.extract import SlicePlan, payload_skip, plan_slices, vector_hash
from ..method.vectors import Vectors
from ..store.blobs import sha256_hex
from ._lora_config import ADAPTER_CONFIG, LoraSettings, read_lora_config
from .peft import ADAPTER_WEIGHTS, LORA_KEY, PEFT_PREFIX, TARGET_KINDS, module_kinds


def _adapter_modules(weights: Path) -> list[str]:
    """Module paths of a LoRA weights file; every key must be a lora_A/lora_B weight, in pairs."""
    tensors, _ = read_header(weights)
    found: dict[str, set[str]] = {}
    for key in tensors:
        hit = LORA_KEY.match(key)
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


def import_peft(catalog: Catalog, vectors: Vectors, path: str | Path, *, name: str, base: str | Path) -> VectorRecord:
    """Register a PEFT LoRA adapter folder as a vector (``v = B·A·scaling`` per module).

    Args:
        catalog: the vector's name lookup and family row.
        vectors: registers the vector; its store receives the slices.
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
    bad = [f"{n}: {k}" for n, k in kinds.items() if k not in TARGET_KINDS]
    if bad:
        raise IncompatibleError("only nn.Linear / Conv1D modules can carry an imported LoRA delta", bad)
    names = [f"{mod}.weight" for mod in modules]
    scope = "blocks" if all(layer_of(n) for n in names) else "all"
    plan = plan_slices(names, scope)
    # Pass 1 validates every block (and gives the vector hash) without writing; pass 2 stores.
    digest = vector_hash([(label, sha256_hex(payload)) for _, label, _, payload, _ in
                          _payloads(weights, plan, lora, base_ck, kinds)])  # fmt: skip
    if catalog.read(lambda s: s.scalar(select(m.Vector.hash).where(m.Vector.name == name))) == digest:
        return vectors.get(digest)  # the same adapter imported again under the same name
    vectors.check_name_free(name)
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

    with vectors.store.writing():  # gc waits until the rows reference the blobs written or reused here
        layers = [{"position": pos, "index": idx, "label": label, "names": members, "norm": norm,
                   "blob": vectors.store.put(payload, skip=payload_skip(payload), width=4)}
                  for pos, (idx, label, members, payload, norm) in enumerate(_payloads(weights, plan, lora, base_ck, kinds))]  # fmt: skip
        return vectors.register(name, key.id, None, None, "fp32", scope, layers, meta, prepare=prepare,
                                event_extra={"source": "peft", "base": base_hash})  # fmt: skip


def _payloads(weights: Path, plan: SlicePlan, lora: LoraSettings, base: Checkpoint,
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

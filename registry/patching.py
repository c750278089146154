"""Writing a patched checkpoint: ``θ = θ_T + Σ_l λ_l v_l``, streamed tensor by tensor.

The output is a complete Hugging Face folder (config, tokenizer, generation
config, safetensors shards with an index when there is more than one). It is
written into a temp folder beside the destination and renamed into place only
when complete, so a crash never leaves a half-written model under the final
name. Every shard's metadata names the vector, the coefficients and the audit
event, so ``audit identify`` works from the files alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ._faults import crashpoint
from ._threads import torch_threads
from .checkpoint import DTYPE_SIZES, Checkpoint
from .errors import AlreadyExistsError, InvalidInputError
from .store import fsync_dir

DEFAULT_SHARD_BYTES = 2 * 1024**3
_COPY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
META_PREFIX = "safegene."


def _copy_side_files(src: Path, dst: Path) -> None:
    """Copy config/tokenizer files; weights, links and odd names are not copied."""
    for f in sorted(src.iterdir()):
        if f.is_symlink() or not f.is_file() or not _COPY_RE.match(f.name):
            continue
        if f.name.endswith(_WEIGHT_SUFFIXES) or f.name == "model.safetensors.index.json":
            continue
        shutil.copyfile(f, dst / f.name)


LEASE_PREFIX = "patch-lease."
PARTIAL_MARK = ".partial-"


def prepare_output(out: Path, *, force: bool, lease_dir: Path | None = None) -> tuple[Path, Path | None]:
    """Check the destination and create a unique temp folder beside it.

    When ``lease_dir`` is given, a lease file there names the temp folder, so
    that `gc` can find and remove it if this process dies before the rename.
    """
    if out.exists() and not force:
        raise AlreadyExistsError(f"{out} already exists; choose another --out or pass --force")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = out.parent.resolve() / f".{out.name}{PARTIAL_MARK}{token}"
    lease = None
    if lease_dir is not None:
        lease_dir.mkdir(parents=True, exist_ok=True)
        lease = lease_dir / f"{LEASE_PREFIX}{token}.tmp"
        lease.write_text(str(tmp), encoding="utf-8")
    tmp.mkdir()
    return tmp, lease


def reclaim_partial(lease: Path) -> Path | None:
    """Remove the temp folder a dead writer's lease names (only a real partial folder)."""
    try:
        target = Path(lease.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return None
    if PARTIAL_MARK in target.name and target.name.startswith(".") and target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
        return target
    return None


def write_patched(
    target: Checkpoint,
    deltas: dict[str, tuple[float, torch.Tensor]] | Callable[[str], tuple[float, torch.Tensor] | None],
    out: Path,
    *,
    metadata: dict[str, str],
    force: bool = False,
    lease_dir: Path | None = None,
    before_rename: Callable[[Path], None] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``target`` with ``W + λ·v`` for every patched tensor into ``out``.

    Args:
        target: the validated target checkpoint.
        deltas: tensor name -> (λ, v), or a function returning it (None = copy as is).
        out: destination folder (must not exist unless ``force``).
        lease_dir: where to leave a lease naming the temp folder (for `gc`).
        before_rename: called with the complete, fsynced temp folder just
            before it takes its final name (e.g. to record it in the catalog).
        metadata: strings stored in every shard's ``__metadata__``.
        shard_bytes: maximum bytes per output shard.
        progress: ``(tensors done, total)`` callback.

    Returns:
        The final folder.
    """
    lookup = deltas.get if isinstance(deltas, dict) else deltas
    tmp, lease = prepare_output(out, force=force, lease_dir=lease_dir)
    try:
        _copy_side_files(target.path, tmp)
        shards = _write_shards(target, lookup, tmp, {"format": "pt", **metadata}, shard_bytes, progress)
        if len(shards) > 1:
            weight_map = {name: fname for fname, names in shards for name in names}
            total = sum(target.tensors[n].nbytes for n in weight_map)
            index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        fsync_dir(tmp)
        if before_rename is not None:
            before_rename(tmp)
        crashpoint("patch.before-rename")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        crashpoint("patch.renamed")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if lease is not None:
            lease.unlink(missing_ok=True)
    return out


def _write_shards(target: Checkpoint, lookup: Callable[[str], tuple[float, torch.Tensor] | None], tmp: Path,
                  metadata: dict[str, str], shard_bytes: int,
                  progress: Callable[[int, int], None] | None) -> list[tuple[str, list[str]]]:  # fmt: skip
    names = target.names()
    groups: list[list[str]] = [[]]
    size = 0
    for n in names:
        nbytes = target.tensors[n].nbytes
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += nbytes
    files = (["model.safetensors"] if len(groups) == 1
             else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])  # fmt: skip
    done = 0
    with torch_threads(1):
        for fname, group in zip(files, groups, strict=True):
            done = _write_shard(target, lookup, tmp / fname, group, metadata, done, len(names), progress)
    return list(zip(files, groups, strict=True))



def _write_shard(target: Checkpoint, lookup: Callable[[str], tuple[float, torch.Tensor] | None], path: Path,
                 group: list[str], metadata: dict[str, str], done: int, total: int,
                 progress: Callable[[int, int], None] | None) -> int:  # fmt: skip
    # Streamed: the safetensors header is known from the target's shapes and
    # dtypes, so each tensor is written as soon as it is patched and then
    # dropped; memory holds one tensor, not a whole shard.
    order = sorted(group, key=lambda n: (-DTYPE_SIZES[target.tensors[n].dtype], n))  # safetensors' own order
    with open(path, "wb") as fh:
        fh.write(_shard_header(target, order, metadata))
        for n in order:
            w = target.get_tensor(n)
            delta = lookup(n)
            if delta is not None:
                lam, v = delta
                w = (w.to(torch.float32) + lam * v).to(w.dtype)
            if w.numel():
                fh.write(w.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del w
            done += 1
            if progress:
                progress(done, total)
        fh.flush()
        crashpoint("patch.shard-written")
        os.fsync(fh.fileno())
    return done


def _shard_header(target: Checkpoint, order: list[str], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata}
    off = 0
    for n in order:
        info = target.tensors[n]
        entries[n] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [off, off + info.nbytes]}
        off += info.nbytes
    head = json.dumps(entries, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head


def read_patch_metadata(path: str | Path) -> dict[str, str]:
    """The ``safegene.*`` metadata of a folder's first shard (empty when stripped)."""
    ck = Checkpoint(path)
    for fname in ck.files:
        meta = {k: v for k, v in ck.metadata.get(fname, {}).items() if k.startswith(META_PREFIX)}
        if meta:
            return meta
    return {}

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
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._faults import crashpoint
from .._threads import torch_threads
from ..checkpoints.hashing import ContentHasher, pread_exact
from ..checkpoints.reader import DTYPE_SIZES, Checkpoint, torch_dtype
from ..checkpoints.writer import header_bytes, rewrite_metadata
from ..errors import InvalidInputError
from ..store.atomic import is_model_folder, prepare_output, publish
from ..store.blobs import fsync_path

if TYPE_CHECKING:
    import torch

DEFAULT_SHARD_BYTES = 2 * 1024**3
_COPY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def _copy_side_files(src: Path, dst: Path) -> None:
    """Copy config/tokenizer files; weights, links and odd names are not copied."""
    for f in sorted(src.iterdir()):
        if f.is_symlink() or not f.is_file() or not _COPY_RE.match(f.name):
            continue
        if f.name.endswith(_WEIGHT_SUFFIXES) or f.name == "model.safetensors.index.json":
            continue
        shutil.copyfile(f, dst / f.name)


def write_patched(
    target: Checkpoint,
    deltas: dict[str, tuple[float, torch.Tensor]] | Callable[[str], tuple[float, torch.Tensor] | None],
    out: Path,
    *,
    metadata: dict[str, str],
    force: bool = False,
    lease_dir: Path | None = None,
    before_rename: Callable[[Path, str | None], None] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
    fill: Callable[[], dict[str, str]] | None = None,
) -> Path:
    """Write ``target`` with ``W + λ·v`` for every patched tensor into ``out``.

    Args:
        target: the validated target checkpoint.
        deltas: tensor name -> (λ, v), or a function returning it (None = copy as is).
        out: destination folder (must not exist unless ``force``).
        lease_dir: where to leave a lease naming the temp folder (for `gc`).
        before_rename: called with the complete, fsynced temp folder and its
            content hash (None when it could not be computed while writing)
            just before it takes its final name (e.g. to record it in the catalog).
        metadata: strings stored in every shard's ``__metadata__``.
        shard_bytes: maximum bytes per output shard.
        progress: ``(tensors done, total)`` callback.
        fill: called once every shard is written; returns final values for metadata
            keys written with a placeholder of the same length (e.g. a hash still
            being computed while the shards were written). They are written in
            place, before anything is fsynced for good or renamed.

    Returns:
        The final folder.
    """
    lookup = deltas.get if isinstance(deltas, dict) else deltas
    tmp, lease = prepare_output(out, force=force, lease_dir=lease_dir, replaceable=is_model_folder,
                                what="model folder")
    try:
        _copy_side_files(target.path, tmp)
        shards, digest = _write_shards(target, lookup, tmp, {"format": "pt", **metadata}, shard_bytes, progress)
        if fill is not None:
            final = fill()
            for fname, _ in shards:
                rewrite_metadata(tmp / fname, final)
            metadata = {**metadata, **final}
        if len(shards) > 1:
            weight_map = {name: fname for fname, names in shards for name in names}
            total = sum(target.tensors[n].nbytes for n in weight_map)
            index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        # Every file (shards once their metadata is final, index, side files) is made
        # durable here, once, before the folder is renamed into place.
        for f in sorted(tmp.iterdir()):
            fsync_path(f)
        fsync_path(tmp)
        if before_rename is not None:
            before_rename(tmp, digest)
        crashpoint("patch.before-rename")
        publish(tmp, out, force=force, replaceable=is_model_folder, what="model folder")
        crashpoint("patch.renamed")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if lease is not None:
            lease.unlink(missing_ok=True)
    return out


def _plan_shards(target: Checkpoint, shard_bytes: int) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(file names, tensor names per shard, the order each shard is written in)."""
    groups: list[list[str]] = [[]]
    size = 0
    for n in target.names():
        nbytes = target.tensors[n].nbytes
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += nbytes
    files = (["model.safetensors"] if len(groups) == 1
             else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])  # fmt: skip
    orders = [sorted(g, key=lambda n: (-DTYPE_SIZES[target.tensors[n].dtype], n)) for g in groups]  # safetensors' order
    return files, groups, orders


def write_order(target: Checkpoint, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """The order :func:`write_patched` asks its lookup for the target's tensors in."""
    return [n for order in _plan_shards(target, shard_bytes)[2] for n in order]


def _write_shards(target: Checkpoint, lookup: Callable[[str], tuple[float, torch.Tensor] | None], tmp: Path,
                  metadata: dict[str, str], shard_bytes: int,
                  progress: Callable[[int, int], None] | None) -> tuple[list[tuple[str, list[str]]], str | None]:  # fmt: skip
    names = target.names()
    files, groups, orders = _plan_shards(target, shard_bytes)
    # The output has the target's names, dtypes and shapes: when the shards are
    # written in name order (one dtype width, the usual case), the output's content
    # hash is computed from the bytes as they are written, not read back.
    hasher = ContentHasher(target) if [n for o in orders for n in o] == names else None
    writer = _ShardWriter(target, lookup, hasher, len(names), progress)
    with torch_threads(1):
        for fname, order in zip(files, orders, strict=True):
            writer.write(tmp / fname, order, metadata)
    return list(zip(files, groups, strict=True)), hasher.hexdigest() if hasher is not None else None


class _ShardWriter:
    """Streams tensors into shard files in cache-sized chunks through reused buffers.

    A tensor without a delta is copied byte for byte; a patched one is computed
    chunk by chunk as ``(W.float() + λ·v).to(W.dtype)`` — the same operations, hence
    the same bits, as on whole tensors — so nothing large is allocated per
    tensor (fresh multi-MB temporaries cost more in page faults than the
    arithmetic itself).
    """

    _CHUNK = 1 << 20  # elements

    def __init__(self, target: Checkpoint, lookup: Callable[[str], tuple[float, torch.Tensor] | None],
                 hasher: ContentHasher | None, total: int, progress: Callable[[int, int], None] | None) -> None:  # fmt: skip
        import torch  # on use, not on import: `audit` reads patch metadata through this module

        self.target, self.lookup, self.hasher, self.total, self.progress = target, lookup, hasher, total, progress
        self.done = 0
        self.unsynced = 0
        self.raw = bytearray(self._CHUNK * 8)
        self.acc = torch.empty(self._CHUNK, dtype=torch.float32)
        self.step = torch.empty(self._CHUNK, dtype=torch.float32)
        self.fds: dict[str, int] = {}

    def write(self, path: Path, order: list[str], metadata: dict[str, str]) -> None:
        try:
            with open(path, "wb") as fh:
                fh.write(header_bytes(((n, self.target.tensors[n].dtype, self.target.tensors[n].shape,
                                        self.target.tensors[n].nbytes) for n in order), metadata))
                for n in order:
                    if self.hasher is not None:
                        self.hasher.begin(n)
                    delta = self.lookup(n)
                    info = self.target.tensors[n]
                    if delta is None:
                        self._copy(fh, n)
                    elif info.dtype in ("F32", "BF16", "F16") and delta[1].is_contiguous():
                        self._patch_chunked(fh, n, *delta)
                    else:
                        self._emit(fh, self._patched_whole(n, *delta))
                    self.done += 1
                    if self.progress:
                        self.progress(self.done, self.total)
                fh.flush()
                crashpoint("patch.shard-written")
        finally:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()

    def _fd(self, n: str) -> int:
        f = self.target.tensors[n].file
        if f not in self.fds:
            self.fds[f] = os.open(self.target.path / f, os.O_RDONLY)
        return self.fds[f]

    def _read(self, n: str, at: int, size: int) -> memoryview:
        return pread_exact(self._fd(n), self.raw, size, at, self.target, n)

    _WRITEBACK = 64 << 20

    def _emit(self, fh: Any, data: memoryview) -> None:
        fh.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        # Start the disk writeback of what is written so far (DONTNEED on dirty pages
        # does that on Linux), so the final fsync waits for little and the writer is
        # not throttled by a large dirty backlog.
        self.unsynced += len(data)
        if self.unsynced >= self._WRITEBACK and hasattr(os, "posix_fadvise"):
            fh.flush()
            self.unsynced = 0
            try:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass  # only a hint: the final fsync makes the file durable either way

    def _copy(self, fh: Any, n: str) -> None:
        info = self.target.tensors[n]
        step = len(self.raw)
        for at in range(info.start, info.end, step):
            self._emit(fh, self._read(n, at, min(step, info.end - at)))

    def _patch_chunked(self, fh: Any, n: str, lam: float, v: torch.Tensor) -> None:
        import torch

        info = self.target.tensors[n]
        dt, es = torch_dtype(info.dtype), DTYPE_SIZES[info.dtype]
        if v.numel() != info.numel:
            raise InvalidInputError(f"the vector's {n} has {v.numel()} values, the target's {info.numel}")
        flat = v.reshape(-1)
        for s in range(0, info.numel, self._CHUNK):
            k = min(self._CHUNK, info.numel - s)
            w = torch.frombuffer(self._read(n, info.start + s * es, k * es), dtype=dt, count=k)
            acc = self.acc[:k]
            acc.copy_(w)
            vs = flat[s : s + k]
            if vs.dtype == torch.float32:
                torch.mul(vs, lam, out=self.step[:k])
                acc.add_(self.step[:k])
            else:
                acc.add_(vs * lam)  # v's own dtype for λ·v, as on whole tensors
            if dt == torch.float32:
                self._emit(fh, acc.numpy().data.cast("B"))
            else:
                w.copy_(acc)  # round into the read buffer: W is no longer needed
                self._emit(fh, memoryview(self.raw)[: k * es])

    def _patched_whole(self, n: str, lam: float, v: torch.Tensor) -> memoryview:
        import torch

        w = self.target.get_tensor(n)
        w = (w.to(torch.float32) + lam * v).to(w.dtype).contiguous()
        return w.reshape(-1).view(torch.uint8).numpy().data

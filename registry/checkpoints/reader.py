"""Lazy, validated, per-tensor access to Hugging Face checkpoint folders.

A folder holds ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``. Everything read from those files
is untrusted: headers are parsed and checked here (sizes, offsets, overlaps,
dtypes, names) before a single tensor byte is used, and pickle files are never
opened. A checkpoint's identity is the sha256 of its tensors (name, dtype,
shape, bytes) in name order, so re-sharding keeps it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidCheckpointError
from .hashing import ContentHasher, pread_exact  # noqa: F401 - re-exported for the slice builder and patcher

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_BYTES = 16 * 1024 * 1024

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


@cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    # torch is imported on first use: commands that only read headers and the
    # catalog (``vector ls``, ``audit``, ``resolve``) start without it (1.2 s).
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    }  # fmt: skip


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (``"BF16"`` -> ``torch.bfloat16``)."""
    return _torch_dtypes()[code]


_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,511}$")
_SHARD_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}\.safetensors$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def check_tensor_name(name: object, where: object) -> str:
    """Tensor names become catalog keys and metadata: only plain dotted identifiers."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        shown = repr(name)[:80]
        raise InvalidCheckpointError(where, f"tensor name {shown} is not a plain dotted name")
    return name


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without trusting it.

    Returns:
        (tensors by name, ``__metadata__``).

    Raises:
        InvalidCheckpointError: truncated file, header or offsets that lie,
            overlapping tensors, unknown dtype, bad names.
    """
    p = Path(path)
    size = p.stat().st_size
    if size < 8:
        raise InvalidCheckpointError(p, "file is truncated (shorter than the 8-byte header size)")
    with open(p, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise InvalidCheckpointError(
                p, f"header length {n} runs past the file ({size} bytes) or the 100 MiB limit"
            )
        raw = fh.read(n)
    return parse_header(raw, p, data_start=8 + n, data_len=size - 8 - n)


def parse_header(raw: bytes, p: Path, *, data_start: int, data_len: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate the JSON header ``raw`` of a safetensors file or buffer named ``p`` (see :func:`read_header`)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidCheckpointError(p, "header is not UTF-8 JSON; the file is not safetensors") from None
    except RecursionError:
        raise InvalidCheckpointError(p, "header JSON is nested too deeply; the file is not safetensors") from None
    if not isinstance(header, dict):
        raise InvalidCheckpointError(p, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidCheckpointError(p, "__metadata__ must map strings to strings")
    tensors = {
        name: _tensor_info(p, check_tensor_name(name, p), spec, data_start, data_len)
        for name, spec in header.items()
    }
    _check_no_overlap(p, tensors)
    return tensors, meta


def tensors_from_buffer(buf: bytes | bytearray | memoryview, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in memory, validated like a file's header.

    A writable buffer is shared, not copied (the tensors keep it alive); a
    read-only one (``bytes``) is copied, tensor by tensor, so the tensors are
    always writable.
    """
    import torch

    view = memoryview(buf).cast("B")
    size = len(view)
    if size < 8:
        raise InvalidCheckpointError(where, "buffer is shorter than the 8-byte header size")
    n = int.from_bytes(view[:8], "little")
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise InvalidCheckpointError(where, f"header length {n} runs past the buffer ({size} bytes)")
    infos, _ = parse_header(bytes(view[8 : 8 + n]), Path(where), data_start=8 + n, data_len=size - 8 - n)
    out: dict[str, torch.Tensor] = {}
    for name, info in infos.items():
        dtype = torch_dtype(info.dtype)
        chunk = view[info.start : info.end]
        if view.readonly or info.start % DTYPE_SIZES[info.dtype]:
            chunk = memoryview(bytearray(chunk))
        t = torch.frombuffer(chunk, dtype=dtype) if info.numel else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info.shape)
    return out


def _tensor_info(p: Path, name: str, spec: Any, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(spec, dict):
        raise InvalidCheckpointError(p, f"entry for {name} is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise InvalidCheckpointError(p, f"{name} has unsupported dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidCheckpointError(p, f"{name} has a malformed shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise InvalidCheckpointError(p, f"{name} has malformed data_offsets")
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= begin <= end <= data_len:
        raise InvalidCheckpointError(p, f"{name}'s offsets point past the end of the file")
    if end - begin != numel * DTYPE_SIZES[dtype]:
        raise InvalidCheckpointError(p, f"{name}'s byte range does not match its shape and dtype")
    return TensorInfo(name, dtype, tuple(shape), p.name, data_start + begin, data_start + end)


def _check_no_overlap(p: Path, tensors: dict[str, TensorInfo]) -> None:
    last_end, last_name = -1, ""
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.nbytes and t.start < last_end:
            raise InvalidCheckpointError(p, f"tensors {last_name} and {t.name} overlap")
        if t.nbytes:
            last_end, last_name = t.end, t.name


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise InvalidCheckpointError(path.parent, f"no {path.name} ({what})")
    if not path.is_file():
        raise InvalidCheckpointError(path, f"is not a regular file ({what} expected)")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InvalidCheckpointError(path, "file is too large to be a config")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCheckpointError(path, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidCheckpointError(path, "JSON is nested too deeply to be a config") from None
    if not isinstance(obj, dict):
        raise InvalidCheckpointError(path, "expected a JSON object")
    return obj


class Checkpoint:
    """A validated checkpoint folder; tensors are read lazily, one at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise InvalidCheckpointError(path, "no such checkpoint folder")
        self.config = read_json(self.path / "config.json", "a Hugging Face model config")
        self.files = self._find_files()
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        for fname in self.files:
            tensors, meta = read_header(self.path / fname)
            self.metadata[fname] = meta
            for name, info in tensors.items():
                if name in self.tensors:
                    raise InvalidCheckpointError(self.path, f"tensor {name} appears in two shards")
                self.tensors[name] = info
        if not self.tensors:
            raise InvalidCheckpointError(self.path, "checkpoint holds no tensors")

    def _find_files(self) -> list[str]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index, "the shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise InvalidCheckpointError(index, "has no weight_map")
            files = sorted(set(weight_map.values()))
            for f in files:
                if not isinstance(f, str) or not _SHARD_RE.match(f):
                    raise InvalidCheckpointError(index, f"shard name {str(f)[:60]!r} is not a plain file name")
                if not (self.path / f).exists():
                    raise InvalidCheckpointError(index, f"lists shard {f}, which is missing")
                self._check_weight_file(self.path / f)
            return files
        files = sorted(f.name for f in self.path.glob("*.safetensors") if _SHARD_RE.match(f.name))
        for f in files:
            self._check_weight_file(self.path / f)
        if files:
            return files
        if any(self.path.glob("*.bin")) or any(self.path.glob("*.pt")) or any(self.path.glob("*.pth")):
            raise InvalidCheckpointError(
                self.path,
                "only pickle weights (*.bin/*.pt) found; safegene never unpickles: convert them "
                "to safetensors first (e.g. model.save_pretrained(dir, safe_serialization=True) "
                "in a trusted environment)",
            )
        raise InvalidCheckpointError(self.path, "no *.safetensors files")

    def _check_weight_file(self, f: Path) -> None:
        """A weights file is a regular file inside the folder; a link may not leave it."""
        if f.is_symlink() and not f.resolve().is_relative_to(self.path):
            raise InvalidCheckpointError(
                f, "is a link to a file outside the checkpoint folder; copy the weights into the "
                "folder (e.g. `huggingface-cli download --local-dir`) instead of linking them"
            )
        if not f.is_file():
            raise InvalidCheckpointError(f, "is not a regular file (a folder with a weights file's name?)")

    # --- reading -----------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def manifest(self) -> dict[str, tuple[int, ...]]:
        return {n: self.tensors[n].shape for n in self.names()}

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor with ``pread`` into its own buffer.

        No memory map is kept open, so resident memory stays bounded by the
        tensors in use rather than growing with every page of the file touched.
        """
        info = self.tensors[name]
        buf = bytearray(info.nbytes)
        fd = os.open(self.path / info.file, os.O_RDONLY)
        try:
            view, pos = memoryview(buf), 0
            while pos < info.nbytes:
                n = os.preadv(fd, [view[pos:]], info.start + pos)
                if n <= 0:
                    raise InvalidCheckpointError(self.path / info.file, f"file ends inside {name}")
                pos += n
        finally:
            os.close(fd)
        import torch

        if not info.nbytes:
            return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        return torch.frombuffer(buf, dtype=torch_dtype(info.dtype)).reshape(info.shape)

    def iter_tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names or self.names():
            yield name, self.get_tensor(name)

    # --- identity ----------------------------------------------------------

    def content_hash(self) -> str:
        """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
        return ContentHasher(self).hexdigest()

    def dtype_summary(self) -> str:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
        return max(counts, key=lambda k: counts[k]).lower()

    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

"""A GGUF file's header, walked with a bound on every length (the model it describes: ``_gguf_model``).

Layout (GGUF v2/v3, little-endian): ``b"GGUF"``, u32 version, u64 tensor count, u64
metadata count; each metadata entry is a string key, a u32 type and a value (scalars,
strings, or arrays of either); each tensor entry is a name, u32 rank, u64 dims (innermost
first), u32 ggml type and u64 offset into the data section, which starts at the next
multiple of ``general.alignment`` (32). Every string, array and tensor range is checked
against the file's size before it is used, so a truncated or hostile file fails here
with one :class:`~registry.errors.InvalidCheckpointError`, and vocabularies are skipped
over rather than decoded.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidCheckpointError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_MAGIC = b"GGUF"
_MAX_COUNT = 1 << 16  # tensors or metadata keys; real files have tens to a few thousand
_MAX_ARRAY = 1 << 24  # elements of one metadata array (vocabularies are ~10^5)
_MAX_STRING = 64 << 20  # one metadata string (chat templates are kilobytes)
_MAX_NAME = 1 << 10
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}$")  # keys end up in error messages
_FIXED = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# ggml type id -> (name, elements per block, bytes per block): the types gguf.dequantize
# handles (tests/test_gguf.py checks this table against gguf.GGML_QUANT_SIZES).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 29: ("IQ1_M", 256, 56), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}  # fmt: skip

_RECREATE = "re-create it with llama.cpp's convert_hf_to_gguf.py"
_REFETCH = "download or copy the file again"


@dataclass(frozen=True)
class GgufArray:
    """A metadata array, summarised: its element type code and length (values are not kept)."""

    element_type: int
    count: int


@dataclass(frozen=True)
class GgufTensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: GGUF lists the innermost dimension first
    type_name: str
    offset: int  # absolute, in the file
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    """A GGUF file's header, checked for bounds: metadata scalars and strings, tensor table."""

    path: str
    version: int
    file_size: int
    metadata: dict[str, object]
    tensors: tuple[GgufTensorInfo, ...]

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise InvalidCheckpointError(
                self.path, f"metadata general.architecture is missing: {_RECREATE}"
            )
        return arch

    def tensor_types(self) -> dict[str, int]:
        """How many tensors each storage type holds, e.g. ``{"Q4_1": 210, "F32": 61}``."""
        return dict(Counter(t.type_name for t in self.tensors).most_common())


@dataclass(frozen=True)
class ModelSpec:
    """The model a header describes, once its metadata has been checked."""

    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    context: int


# --- the header -------------------------------------------------------------------------


def read_gguf_header(path: str | Path) -> GgufHeader:
    """Parse and bounds-check a GGUF file's header without reading any tensor data.

    Metadata arrays are kept as :class:`GgufArray` summaries (type and length); every
    tensor's byte range is checked to lie inside the file, aligned, without overlaps.

    Args:
        path: the ``.gguf`` file.

    Returns:
        The :class:`GgufHeader`.

    Raises:
        InvalidCheckpointError: the file is missing, empty, not GGUF (v2/v3,
            little-endian), truncated, or its header is inconsistent.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidCheckpointError(p, "no such file: check the path")
    if p.is_dir():
        raise InvalidCheckpointError(p, "is a folder, not a .gguf file: give the file itself")
    if not p.is_file():
        raise InvalidCheckpointError(p, "is not a regular file: give a .gguf file")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise InvalidCheckpointError(p, f"the file is empty: {_REFETCH}")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _Parser(mm, size, p).header()
    except OSError as exc:
        raise InvalidCheckpointError(
            p, f"cannot read the file ({exc.strerror or exc}): check its permissions"
        ) from exc


class _Parser:
    def __init__(self, buf: mmap.mmap, size: int, path: Path) -> None:
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, reason: str) -> InvalidCheckpointError:
        return InvalidCheckpointError(self.path, reason)

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise self.fail(
                f"truncated: {what} runs past the end of the file ({self.size:,} bytes): {_REFETCH}"
            )

    def fixed(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, limit: int) -> str:
        n = self.fixed("<Q", what)
        if n > limit:
            raise self.fail(
                f"{what} claims {n:,} bytes (at most {limit:,} make sense): the header is corrupt"
            )
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8: the header is corrupt") from None

    def header(self) -> GgufHeader:
        self.need(4, "the magic number")
        magic = self.buf[:4]
        if magic != _MAGIC:
            hint = (
                "it is a zip (a wheel?): extract the .gguf from it first"
                if magic == b"PK\x03\x04"
                else "give a .gguf file"
            )
            raise self.fail(f"not a GGUF file (starts with {magic!r}, expected {_MAGIC!r}): {hint}")
        self.pos = 4
        version = self.fixed("<I", "the version")
        if version not in (2, 3):
            if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
                raise self.fail("a big-endian GGUF file: only little-endian files are supported")
            raise self.fail(f"GGUF version {version} is not supported (only 2 and 3): {_RECREATE}")
        n_tensors = self.fixed("<Q", "the tensor count")
        n_kv = self.fixed("<Q", "the metadata count")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise self.fail(
                f"the header claims {n_tensors:,} tensors and {n_kv:,} metadata keys: it is corrupt"
            )
        metadata: dict[str, object] = {}
        for i in range(n_kv):
            key = self.string(f"metadata key #{i}", _MAX_NAME)
            if not _KEY_NAME.match(key):
                raise self.fail(
                    f"metadata key #{i} has an unusable name {key[:80]!r}: the header is corrupt"
                )
            if key in metadata:
                raise self.fail(f"metadata key {key!r} appears twice: the header is corrupt")
            metadata[key] = self.value(self.fixed("<I", f"the type of {key}"), key)
        raw = [self.tensor_info(i) for i in range(n_tensors)]
        return GgufHeader(
            str(self.path), version, self.size, metadata, self.place_tensors(raw, metadata)
        )

    def value(self, vtype: int, key: str) -> object:
        if vtype in _FIXED:
            return self.fixed(_FIXED[vtype], f"the value of {key}")
        if vtype == _STRING:
            return self.string(f"the value of {key}", _MAX_STRING)
        if vtype != _ARRAY:
            raise self.fail(f"metadata {key} has unknown value type {vtype}: the header is corrupt")
        etype = self.fixed("<I", f"the element type of {key}")
        count = self.fixed("<Q", f"the length of {key}")
        if count > _MAX_ARRAY:
            raise self.fail(f"metadata {key} claims {count:,} elements: the header is corrupt")
        if etype in _FIXED:
            n = count * struct.calcsize(_FIXED[etype])
            self.need(n, f"the value of {key}")
            self.pos += n
        elif etype == _STRING:
            self.skip_strings(count, key)
        else:
            raise self.fail(
                f"metadata {key} is an array of type {etype} (nested arrays are not supported)"
            )
        return GgufArray(etype, count)

    def skip_strings(self, count: int, key: str) -> None:
        buf, size, pos, unpack = self.buf, self.size, self.pos, struct.unpack_from
        for _ in range(count):  # tight loop: a vocabulary has ~10^5 entries
            if pos + 8 > size:
                pos = size + 1
                break
            pos += 8 + unpack("<Q", buf, pos)[0]
            if pos > size:
                break
        self.pos = pos
        self.need(0, f"the value of {key}")

    def tensor_info(self, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string(f"the name of tensor #{i}", _MAX_NAME)
        if not _TENSOR_NAME.match(name):
            raise self.fail(
                f"tensor #{i} has an unusable name {name[:80]!r}: the header is corrupt"
            )
        n_dims = self.fixed("<I", f"the rank of {name}")
        if not 1 <= n_dims <= 4:
            raise self.fail(
                f"tensor {name} has {n_dims} dimensions (ggml allows 1 to 4): the header is corrupt"
            )
        dims = tuple(self.fixed("<Q", f"the shape of {name}") for _ in range(n_dims))
        if not all(1 <= d <= 1 << 40 for d in dims):
            raise self.fail(f"tensor {name} has shape {list(dims)}: the header is corrupt")
        return (
            name,
            dims,
            self.fixed("<I", f"the type of {name}"),
            self.fixed("<Q", f"the offset of {name}"),
        )

    def place_tensors(self, raw: list[tuple[str, tuple[int, ...], int, int]], metadata: dict[str, object]) -> tuple[GgufTensorInfo, ...]:  # fmt: skip
        align = metadata.get("general.alignment", 32)
        if (
            not isinstance(align, int)
            or isinstance(align, bool)
            or not 1 <= align <= 1 << 20
            or align & (align - 1)
        ):
            raise self.fail(
                f"metadata general.alignment = {align!r} is not a power of two: the header is corrupt"
            )
        data_start = -(-self.pos // align) * align
        out: list[GgufTensorInfo] = []
        for name, dims, gtype, offset in raw:
            if gtype not in GGML_TYPES:
                raise self.fail(
                    f"tensor {name} is stored as ggml type {gtype}, which cannot be dequantized here"
                )
            type_name, block, type_size = GGML_TYPES[gtype]
            if dims[0] % block:
                raise self.fail(
                    f"tensor {name}: a row of {dims[0]} is not a whole number of {type_name} blocks"
                )
            nbytes = _prod(dims) // block * type_size
            if offset % align:
                raise self.fail(
                    f"tensor {name} is not aligned to {align} bytes: the header is corrupt"
                )
            start = data_start + offset
            if start + nbytes > self.size:
                raise self.fail(f"truncated: tensor {name} ends at byte {start + nbytes:,} "
                                f"but the file has {self.size:,}: {_REFETCH}")  # fmt: skip
            out.append(GgufTensorInfo(name, tuple(reversed(dims)), type_name, start, nbytes))
        if len({t.name for t in out}) != len(out):
            raise self.fail(f"two tensors share a name: {_RECREATE}")
        ordered = sorted(out, key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.offset + a.nbytes > b.offset:
                raise self.fail(f"tensors {a.name} and {b.name} overlap: the header is corrupt")
        return tuple(out)


def _prod(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n

"""The one safetensors header writer: streamed files whose header is written first.

safetensors (the library) writes a file from tensors held in memory; the
registry streams tensors it computes chunk by chunk (slice payloads, patched
shards), so it writes the header itself, byte for byte as ``safetensors``
does: ``u64 little-endian length`` + compact JSON (``__metadata__`` first, then
tensors in order, ``data_offsets`` relative to the data), padded with spaces to
a multiple of 8. Values not known until the data is written (a content hash)
are written as placeholders and set by :func:`rewrite_metadata`, which keeps
the header's length, so no data byte moves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import InvalidInputError

Entry = tuple[str, str, Sequence[int], int]  # name, safetensors dtype code, shape, nbytes


def _encode(header: dict[str, object], length: int | None = None) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    if length is None:
        head += b" " * (-len(head) % 8)
    elif len(head) > length:
        raise InvalidInputError(f"a rewritten safetensors header needs {len(head)} bytes, {length} are reserved")
    else:
        head += b" " * (length - len(head))
    return len(head).to_bytes(8, "little") + head


def header_bytes(entries: Iterable[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The header ``safetensors`` writes for tensors laid out back to back in ``entries`` order.

    Args:
        entries: (name, dtype code such as ``"F32"``, shape, byte size) per tensor.
        metadata: the ``__metadata__`` strings (omitted when None, as safetensors does).

    Returns:
        The 8-byte length and the padded JSON: the file's first bytes.
    """
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    return _encode(header)


def rewrite_metadata(path: str | Path, updates: dict[str, str]) -> None:
    """Set ``__metadata__`` values of a file written with :func:`header_bytes`, in place.

    The header keeps its length (placeholders of the final values' length, or
    padding, make room), so the data does not move.

    Raises:
        InvalidInputError: the new header would not fit in the old one's length.
    """
    with open(path, "r+b") as fh:
        length = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(length))
        header["__metadata__"] = {**header.get("__metadata__", {}), **updates}
        # __metadata__ first, as written
        ordered = {"__metadata__": header.pop("__metadata__"), **header}
        fh.seek(0)
        fh.write(_encode(ordered, length))

"""The ``safegene.*`` metadata a patched folder carries in its safetensors headers.

Every shard of a patched model names the vector, the coefficients and the audit
event that produced it, so ``audit identify DIR`` finds the record from the
files alone.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidCheckpointError
from .reader import MAX_HEADER_BYTES, Checkpoint, parse_header

META_PREFIX = "safegene."


def read_patch_metadata(path: str | Path) -> dict[str, str]:
    """The ``safegene.*`` metadata of a folder's first shard that has any (empty when stripped)."""
    ck = Checkpoint(path)
    for fname in ck.files:
        meta = {k: v for k, v in ck.metadata.get(fname, {}).items() if k.startswith(META_PREFIX)}
        if meta:
            return meta
    return {}


def patch_metadata_from_header(buf: bytes, where: str = "upload") -> dict[str, str]:
    """The ``safegene.*`` metadata in the first bytes of a safetensors file: its 8-byte length and JSON
    header (the tensors' bytes are neither needed nor read), validated like a file's header.

    Raises:
        InvalidCheckpointError: too short, a length past the bytes given, or a malformed header.
    """
    if len(buf) < 8:
        raise InvalidCheckpointError(where, "shorter than the 8-byte header size; send the file's first bytes")
    n = int.from_bytes(buf[:8], "little")
    if n > MAX_HEADER_BYTES or n > len(buf) - 8:
        raise InvalidCheckpointError(where, f"header length {n} runs past the {len(buf) - 8} bytes sent; "
                                            "send the 8-byte length and the whole JSON header")  # fmt: skip
    # The tensors' bytes are not here: offsets are checked against nothing but each other.
    _, meta = parse_header(bytes(buf[8 : 8 + n]), Path(where), data_start=8 + n, data_len=2**62)
    return {k: v for k, v in meta.items() if k.startswith(META_PREFIX)}

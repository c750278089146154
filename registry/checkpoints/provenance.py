"""The ``safegene.*`` metadata a patched folder carries in its safetensors headers.

Every shard of a patched model names the vector, the coefficients and the audit
event that produced it, so ``audit identify DIR`` finds the record from the
files alone.
"""

from __future__ import annotations

from pathlib import Path

from .reader import Checkpoint

META_PREFIX = "safegene."


def read_patch_metadata(path: str | Path) -> dict[str, str]:
    """The ``safegene.*`` metadata of a folder's first shard that has any (empty when stripped)."""
    ck = Checkpoint(path)
    for fname in ck.files:
        meta = {k: v for k, v in ck.metadata.get(fname, {}).items() if k.startswith(META_PREFIX)}
        if meta:
            return meta
    return {}

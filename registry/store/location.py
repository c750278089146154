"""Which store a registry uses: chosen by URL, as fsspec and MLflow's artifact repositories do.

* ``local`` (the default): ``<home>/store``, a directory (:mod:`registry.store.blobs`);
* an absolute path or ``file:///path``: a directory elsewhere;
* ``s3://bucket/prefix``: an S3-compatible bucket (:mod:`registry.store.s3`), with
  a read-through cache in ``$SAFEGENE_CACHE_DIR`` (default ``<home>/cache``) of at
  most ``$SAFEGENE_CACHE_MAX_BYTES`` (default 10 GiB; ``0`` turns it off); blobs of
  ``$SAFEGENE_S3_MULTIPART_THRESHOLD`` or more (default 64 MiB) go up in parts.

The catalog records where its blobs live (the ``store.url`` setting), so that
every host opening it finds them; ``safegene store migrate`` moves them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import ConfigurationError
from .base import Store
from .blobs import BlobStore
from .cache import DEFAULT_MAX_BYTES, ReadCache

LOCAL = "local"
SETTING = "store.url"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)

Lock = Callable[..., AbstractContextManager[None]]


def canonical_url(url: str | None, home: Path) -> str:
    """The one spelling of a store URL that the catalog records and compares.

    Raises:
        ConfigurationError: a URL of no known kind.
    """
    if not url or url == LOCAL:
        return LOCAL
    if url.startswith("s3://"):
        from .s3 import parse_s3_url

        bucket, prefix = parse_s3_url(url)
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    path = url[len("file://"):] if url.startswith("file://") else url
    if not path.startswith("/"):
        raise ConfigurationError(f"store {url!r}: give `local`, an absolute path, file:///PATH or s3://BUCKET/PREFIX")
    resolved = Path(path).resolve()
    return LOCAL if resolved == (home / "store").resolve() else str(resolved)


def open_store(url: str | None, *, home: Path, lock: Lock, endpoint: str | None = None) -> Store:
    """The store a canonical or user-given URL names (nothing is contacted yet)."""
    where = canonical_url(url, home)
    if where == LOCAL:
        return BlobStore(home / "store")
    if not where.startswith("s3://"):
        return BlobStore(where)
    from .s3 import MULTIPART_THRESHOLD, S3BlobStore

    cache_dir = Path(os.environ.get("SAFEGENE_CACHE_DIR") or home / "cache").expanduser()
    max_bytes = parse_size(os.environ.get("SAFEGENE_CACHE_MAX_BYTES"), DEFAULT_MAX_BYTES)
    threshold = parse_size(os.environ.get("SAFEGENE_S3_MULTIPART_THRESHOLD"), MULTIPART_THRESHOLD)
    return S3BlobStore(where, lock=lock, tmp_dir=home / "store" / "tmp",
                       cache=ReadCache(cache_dir, max_bytes=max_bytes) if max_bytes > 0 else None,
                       endpoint=endpoint or os.environ.get("SAFEGENE_STORE_ENDPOINT") or None,
                       multipart_threshold=threshold)  # fmt: skip


def parse_size(text: str | None, default: int) -> int:
    """``"2G"``, ``"512MiB"``, ``"1000000"`` → bytes.

    Raises:
        ConfigurationError: not a size.
    """
    if text is None or text == "":
        return default
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigurationError(f"{text!r} is not a size (e.g. 10G, 512M, 0): fix SAFEGENE_CACHE_MAX_BYTES "
                                 "or SAFEGENE_S3_MULTIPART_THRESHOLD")
    unit = (m.group(2) or "")[:1].lower()
    return int(m.group(1)) * 1024 ** " kmgt".index(unit or " ")

"""A verified, size-bounded local read-through cache of an object store's blobs.

Layout (under the registry home, or ``$SAFEGENE_CACHE_DIR``)::

    cache/
    ├── blobs/3f/3fa9…e1     stored (encoded) bytes, exactly as the bucket holds them
    ├── tmp/                 in-flight writes (temp file + fsync + rename, as the local store)
    └── cache.lock           held exclusive while evicting

A cached blob is only a copy: every read of it is verified like a download
(:func:`registry.store.base.verify_stored`), and a copy that fails is dropped and
fetched again. Several processes may share the cache: entries appear by atomic
rename, eviction (least recently used first: a hit touches the file's mtime)
runs under a file lock, and a reader that loses a race with eviction sees a miss.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import codec as _codec
from .base import SHA_RE, atomic_write, check_sha
from .blobs import flock

DEFAULT_MAX_BYTES = 10 * 2**30


class ReadCache:
    """Stored blobs kept on local disk, at most ``max_bytes`` of them."""

    def __init__(self, root: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.max_bytes = max_bytes

    def path_for(self, sha: str) -> Path:
        check_sha(sha)
        return self.blob_dir / sha[:2] / sha

    def read(self, sha: str) -> _codec.Buffer | None:
        """The cached stored bytes of ``sha`` (unverified), or None."""
        path = self.path_for(sha)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: evicted last
        except FileNotFoundError:
            return None
        return data

    def put(self, sha: str, stored: _codec.Buffer) -> None:
        """Keep a copy of stored bytes that have just been verified."""
        if self.max_bytes <= 0:
            return
        path = self.path_for(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, [bytes(stored)], tmp_dir=self.tmp_dir)
        # Counted afresh every time (a cache holds few blobs: a slice is megabytes), so that what
        # other processes added is seen: after the last put's eviction, the cache fits its bound.
        self._evict()

    def drop(self, sha: str) -> None:
        self.path_for(sha).unlink(missing_ok=True)

    def usage(self) -> tuple[int, int]:
        """(blobs, bytes) cached now."""
        entries = self._entries()
        return len(entries), sum(size for _, size, _ in entries)

    def _entries(self) -> list[tuple[float, int, Path]]:
        out: list[tuple[float, int, Path]] = []
        if not self.blob_dir.is_dir():
            return out
        for sub in self.blob_dir.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if not SHA_RE.match(f.name):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, f))
        return out

    def _evict(self) -> None:
        """Remove least recently used entries until the cache fits ``max_bytes``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with flock(self.root / "cache.lock", exclusive=True):
            entries = sorted(self._entries(), key=lambda e: e[0])
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size

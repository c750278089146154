"""Content-addressed blob store on a local directory (the default backend).

Layout under the registry home::

    store/
    ├── blobs/
    │   └── 3f/
    │       └── 3fa9…e1          one encoded blob (see registry.codec); its name is the
    │                            sha256 of the canonical *uncompressed* payload
    ├── tmp/
    │   └── 3fa9…e1.<host>.<pid>.<random>.tmp   in-flight writes; gc removes stale ones
    └── writers.lock         held shared by every writer until its blobs are referenced
                             in the catalog, exclusive by gc while it deletes blobs

A write goes to a unique temp file, is fsynced, then ``os.replace``d onto its
final name (and the directory fsynced), so a crash leaves either nothing or a
temp file, never a half-written blob under a final name. Every read re-hashes
the decoded payload against its name (:class:`registry.store.base.Store`).

A blob is written (or found already stored and reused) before the catalog row
that references it is committed. ``gc`` must not delete it in between, however
long the extraction takes, so writers hold :meth:`~registry.store.base.Store.writing`
(a shared ``flock``) from their first blob until the catalog commit, and gc
deletes blobs only under :meth:`~registry.store.base.Store.collecting` (the
exclusive lock). Temp files name their host and process
(:mod:`registry.store.leases`): a temp file is stale when its writer, on this
host, is dead, or, written on another host, when it is older than gc's grace
period.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import IntegrityCheckError
from . import codec as _codec
from .base import (
    SHA_RE,
    TEMP_SUFFIX,
    BlobInfo,
    EncodedBlob,
    StaleTemp,
    Store,
    StoredObject,
    atomic_write,
    check_sha,
    fsync_path,
    missing,
    sha256_hex,
)
from .leases import owner_alive, parse_owner

__all__ = ["TEMP_SUFFIX", "BlobInfo", "BlobStore", "EncodedBlob", "atomic_write", "fsync_path", "sha256_hex"]


class BlobStore(Store):
    """A directory of content-addressed, compressed blobs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.url = str(self.root.resolve())  # absolute: a relative --home is still this folder

    def ensure(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha: str) -> Path:
        check_sha(sha)
        return self.blob_dir / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path_for(sha).is_file()

    def stored_head(self, sha: str) -> tuple[bytes, int] | None:
        try:
            with open(self.path_for(sha), "rb") as fh:
                return fh.read(5), os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            return None

    def write_stored(self, sha: str, parts: list[bytes]) -> None:
        path = self.path_for(sha)
        self.ensure()
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, parts, tmp_dir=self.tmp_dir, replace=False)

    def read_stored(self, sha: str, scratch: _codec.Scratch | None = None) -> _codec.Buffer:
        path = self.path_for(sha)
        try:
            if scratch is None:
                return path.read_bytes()
            return self._read_into(path, scratch)
        except FileNotFoundError:
            raise missing(sha) from None

    @staticmethod
    def _read_into(path: Path, scratch: _codec.Scratch) -> _codec.Buffer:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            buf = scratch.take("stored", size)
            view, got = buf.data, 0
            while got < size:
                n = os.readv(fd, [view[got:]])
                if not n:
                    raise IntegrityCheckError(f"blob {path.name[:12]} shrank while it was read")
                got += n
            return view
        finally:
            os.close(fd)

    def delete(self, sha: str) -> None:
        self.path_for(sha).unlink(missing_ok=True)

    def iter_objects(self) -> Iterator[StoredObject]:
        if not self.blob_dir.is_dir():
            return
        for sub in sorted(self.blob_dir.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                if SHA_RE.match(f.name) and f.name[:2] == sub.name:
                    try:
                        st = f.stat()
                    except FileNotFoundError:
                        continue
                    yield StoredObject(f.name, st.st_size, st.st_mtime)

    def stale_temp_files(self, *, older_than_s: float = 3600.0) -> list[Path]:
        """Temp files (and leases) no live writer can still own.

        A temp file written on this host is stale once its process is dead (at
        any age); one written on another host, or of unknown owner, once it is
        older than ``older_than_s`` (a PID means nothing across hosts).
        """
        return stale_local_temps(self.tmp_dir, older_than_s)

    def stale_temps(self, *, older_than_s: float = 3600.0) -> list[StaleTemp]:
        return [local_temp(p) for p in self.stale_temp_files(older_than_s=older_than_s)]

    @contextlib.contextmanager
    def _lock(self, *, exclusive: bool) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with flock(self.root / "writers.lock", exclusive=exclusive):
            yield


@contextlib.contextmanager
def flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def stale_local_temps(tmp_dir: Path, older_than_s: float) -> list[Path]:
    """The temp files and leases in ``tmp_dir`` whose writer is dead (or, elsewhere, that are old)."""
    if not tmp_dir.is_dir():
        return []
    cutoff = time.time() - older_than_s
    out = []
    for f in tmp_dir.iterdir():
        if not f.name.endswith(TEMP_SUFFIX):
            continue
        alive = owner_alive(parse_owner(f.name[: -len(TEMP_SUFFIX)]))
        try:
            old = f.stat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if alive is False or (alive is None and old):
            out.append(f)
    return sorted(out)


def local_temp(path: Path) -> StaleTemp:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    return StaleTemp(path.name, size, path, lambda: path.unlink(missing_ok=True))

"""Content-addressed blob store on a local directory.

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
the decoded payload against its name.

A blob is written (or found already stored and reused) before the catalog row
that references it is committed. ``gc`` must not delete it in between, however
long the extraction takes, so writers hold :meth:`BlobStore.writing` (a shared
lock) from their first blob until the catalog commit, and gc deletes blobs only
under :meth:`BlobStore.collecting` (the exclusive lock). Temp files name their
host and process (:mod:`registry.store.leases`): a temp file is stale when its
writer, on this host, is dead, or, written on another host, when it is older
than gc's grace period.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._faults import crashpoint
from ..errors import IntegrityCheckError, InvalidInputError
from . import codec as _codec
from .leases import host_token, owner_alive, parse_owner

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    codec: str
    raw_size: int
    stored_size: int
    stored_sha256: str | None = None  # the stored file's sha256, when known to decode to the payload
    # (written from that payload by this store, or read back and checked)


@dataclass(frozen=True)
class EncodedBlob:
    """A payload hashed and compressed, not yet written (see :meth:`BlobStore.encode`)."""

    sha256: str
    codec: str
    raw_size: int
    parts: list[bytes]  # the stored bytes, consecutive (see registry.codec.encode_parts)

    @property
    def stored_size(self) -> int:
        return sum(len(p) for p in self.parts)


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha(sha: str) -> str:
    if not _SHA_RE.match(sha):
        raise InvalidInputError(f"{sha!r} is not a sha256 hex digest")
    return sha


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (its entries), by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | list[bytes], *, tmp_dir: Path | None = None) -> None:
    """Write ``data`` (bytes, or consecutive parts) to ``path`` via a unique temp file, fsync and rename."""
    tmp_dir = tmp_dir or path.parent
    tmp = tmp_dir / f"{path.name}.{host_token()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        with open(tmp, "xb") as fh:
            if isinstance(data, list):
                fh.writelines(data)
            else:
                fh.write(data)
            crashpoint("store.temp-written")
            fh.flush()
            os.fsync(fh.fileno())
        crashpoint("store.before-rename")
        os.replace(tmp, path)
        fsync_path(path.parent)
        crashpoint("store.renamed")
    finally:
        tmp.unlink(missing_ok=True)


class BlobStore:
    """A directory of content-addressed, compressed blobs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"

    def ensure(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha: str) -> Path:
        _check_sha(sha)
        return self.blob_dir / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path_for(sha).is_file()

    def put(self, payload: bytes, *, skip: int = 0, width: int = 1) -> BlobInfo:
        """Store ``payload`` (idempotent) and describe the stored blob.

        Args:
            payload: canonical uncompressed bytes; the key is their sha256.
            skip: leading bytes not to byte-group (a safetensors header).
            width: element width in bytes of the rest (2 or 4 enables byte grouping).
        """
        sha = sha256_hex(payload)
        existing = self._existing(sha, len(payload))
        if existing is not None:
            return existing
        name, parts = _codec.encode_parts(payload, skip=skip, width=width)
        return self._write_new(EncodedBlob(sha, name, len(payload), parts))

    def encode(self, payload: bytes | bytearray | memoryview, *, skip: int = 0, width: int = 1) -> EncodedBlob:
        """Hash and compress ``payload`` concurrently (both release the GIL); nothing is written.

        For streams of new payloads (extraction), where checking for an existing
        blob first would serialize the hash before the compression.
        """
        with ThreadPoolExecutor(1, thread_name_prefix="safegene-sha") as side:
            sha = side.submit(sha256_hex, payload)
            name, parts = _codec.encode_parts(payload, skip=skip, width=width)
            return EncodedBlob(sha.result(), name, memoryview(payload).nbytes, parts)

    def write(self, blob: EncodedBlob) -> BlobInfo:
        """Store an encoded blob under its name (idempotent: an existing blob is kept)."""
        existing = self._existing(blob.sha256, blob.raw_size)
        return existing if existing is not None else self._write_new(blob)

    def _write_new(self, blob: EncodedBlob) -> BlobInfo:
        path = self.path_for(blob.sha256)
        self.ensure()
        path.parent.mkdir(exist_ok=True)
        # The digest of the very bytes written: recorded in the catalog, it lets the
        # first read of this file skip re-hashing the payload, as later reads do
        # (see get); a file changed since then gets the full check.
        h = hashlib.sha256()
        for part in blob.parts:
            h.update(part)
        atomic_write(path, blob.parts, tmp_dir=self.tmp_dir)
        return BlobInfo(blob.sha256, blob.codec, blob.raw_size, blob.stored_size, h.hexdigest())

    def _existing(self, sha: str, raw_size: int) -> BlobInfo | None:
        path = self.path_for(sha)
        if not path.is_file():
            return None
        with open(path, "rb") as fh:
            head = fh.read(5)
        return BlobInfo(sha, _codec.codec_name(head), raw_size, path.stat().st_size)

    def get(self, sha: str, *, max_size: int | None = None, scratch: _codec.Scratch | None = None,
            stored_sha256: str | None = None,
            on_verified: Callable[[str], None] | None = None) -> bytes | bytearray | memoryview:  # fmt: skip
        """Read, decode and verify one blob (a writable memoryview for byte-grouped blobs: no copy).

        ``scratch``: reusable buffers for the stored bytes and the decoding (the
        result is then a view of it, valid until the scratch's next blob): they
        spare the page faults of fresh allocations for every blob.

        ``stored_sha256``: the sha256 of a file of this blob as this store wrote it,
        or as it once passed the full check (the catalog's ``blobs.stored_sha256``).
        When the file still hashes to it, it is byte for byte a file encoded from,
        or already seen to decode to, the payload named ``sha``, and decoding is
        deterministic: the payload is not hashed again (a third of the bytes to
        hash, or less). Otherwise the blob gets the full check, and a payload
        that still hashes to its name is returned; ``on_verified`` is then given
        the sha256 of the file just checked, for the caller to record.

        Raises:
            IntegrityCheckError: missing blob, undecodable bytes or a hash mismatch.
        """
        path = self.path_for(sha)
        try:
            stored = self._read(path, scratch)
        except FileNotFoundError:
            raise IntegrityCheckError(
                f"blob {sha[:12]} is missing from the store; run `safegene verify`"
            ) from None
        file_sha = sha256_hex(stored) if stored_sha256 is not None or on_verified is not None else None
        if file_sha is not None and file_sha == stored_sha256:
            try:
                return _codec.decode(stored, max_size=max_size, scratch=scratch, check_digest=False)
            except IntegrityCheckError as exc:
                raise IntegrityCheckError(f"blob {sha[:12]} is corrupt: {exc}") from None
        try:
            payload = _codec.decode(stored, max_size=max_size, scratch=scratch)
        except IntegrityCheckError as exc:
            raise IntegrityCheckError(f"blob {sha[:12]} is corrupt: {exc}") from None
        actual = sha256_hex(payload)
        if actual != sha:
            raise IntegrityCheckError(
                f"blob {sha[:12]} is corrupt: its content hashes to {actual[:12]}"
            )
        if on_verified is not None and file_sha is not None:
            on_verified(file_sha)
        return payload

    @staticmethod
    def _read(path: Path, scratch: _codec.Scratch | None) -> _codec.Buffer:
        if scratch is None:
            return path.read_bytes()
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

    def iter_shas(self) -> Iterator[str]:
        if not self.blob_dir.is_dir():
            return
        for sub in sorted(self.blob_dir.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    if _SHA_RE.match(f.name) and f.name[:2] == sub.name:
                        yield f.name

    def stale_temp_files(self, *, older_than_s: float = 3600.0) -> list[Path]:
        """Temp files no live writer can still own.

        A temp file written on this host is stale once its process is dead (at
        any age); one written on another host, or of unknown owner, once it is
        older than ``older_than_s`` (a PID means nothing across hosts).
        """
        if not self.tmp_dir.is_dir():
            return []
        cutoff = time.time() - older_than_s
        out = []
        for f in self.tmp_dir.iterdir():
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

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing or reusing blobs until the catalog references them (shared)."""
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """Hold while deciding which blobs are unreferenced and deleting them (exclusive)."""
        with self._lock(fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "writers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

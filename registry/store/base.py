"""What every blob store guarantees, whatever holds the bytes.

A store maps the sha256 of a canonical *uncompressed* payload to one encoded
blob (:mod:`registry.store.codec`). Backends (:class:`~registry.store.blobs.BlobStore`,
a local directory; :class:`~registry.store.s3.S3BlobStore`, an S3-compatible
bucket) supply a few primitives: read, write-once, list, delete, the
writers/collector lock. This class builds the contract on them:

* ``put`` / ``encode`` + ``write`` are idempotent: an existing blob is kept;
* a new blob becomes visible whole or not at all (the backend's write-once);
* every ``get`` checks the stored bytes: against the digest the catalog
  recorded (``stored_sha256``) or, failing that, by decoding and re-hashing
  the payload against its name;
* writers hold :meth:`writing` (shared) from their first blob until the
  catalog references it; ``gc`` deletes only under :meth:`collecting`
  (exclusive), so it never removes a blob a pending extraction has claimed.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._faults import crashpoint
from .._fs import fsync_path
from ..errors import IntegrityCheckError, InvalidInputError
from . import codec as _codec
from .leases import host_token

if TYPE_CHECKING:
    from .cache import ReadCache

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
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
    """A payload hashed and compressed, not yet written (see :meth:`Store.encode`)."""

    sha256: str
    codec: str
    raw_size: int
    parts: list[bytes]  # the stored bytes, consecutive (see registry.codec.encode_parts)

    @property
    def stored_size(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass(frozen=True)
class StoredObject:
    """One stored blob as a listing sees it."""

    sha256: str
    size: int  # stored (encoded) bytes
    mtime: float  # when it was written (seconds since the epoch)


@dataclass(frozen=True)
class StaleTemp:
    """Leftovers of a dead writer: a temp file, a lease, an unfinished upload."""

    name: str
    size: int
    path: Path | None  # a local file (temp file or lease); None for a remote upload
    remove: Callable[[], None]


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha(sha: str) -> str:
    if not SHA_RE.match(sha):
        raise InvalidInputError(f"{sha!r} is not a sha256 hex digest")
    return sha


def atomic_write(path: Path, data: bytes | list[bytes], *, tmp_dir: Path | None = None,
                 replace: bool = True) -> bool:  # fmt: skip
    """Write ``data`` (bytes, or consecutive parts) to ``path`` via a unique temp file, fsync and rename.

    With ``replace=False`` an existing ``path`` is kept (write-once) and False returned.
    """
    from .atomic import rename_noreplace  # atomic imports this module

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
        if replace:
            os.replace(tmp, path)
        else:
            try:
                rename_noreplace(tmp, path)
            except FileExistsError:
                return False
        fsync_path(path.parent)
        crashpoint("store.renamed")
        return True
    finally:
        tmp.unlink(missing_ok=True)


def missing(sha: str) -> IntegrityCheckError:
    return IntegrityCheckError(f"blob {sha[:12]} is missing from the store; run `safegene verify`")


def verify_stored(sha: str, stored: _codec.Buffer, *, max_size: int | None = None,
                  scratch: _codec.Scratch | None = None, stored_sha256: str | None = None,
                  on_verified: Callable[[str], None] | None = None) -> bytes | bytearray | memoryview:  # fmt: skip
    """Decode stored bytes named ``sha`` and prove they are that payload (see :meth:`Store.get`).

    Raises:
        IntegrityCheckError: undecodable bytes or a hash mismatch.
    """
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
        raise IntegrityCheckError(f"blob {sha[:12]} is corrupt: its content hashes to {actual[:12]}")
    if on_verified is not None and file_sha is not None:
        on_verified(file_sha)
    return payload


class Store(abc.ABC):
    """Content-addressed, compressed, verified blobs (see the module docstring).

    ``tmp_dir`` is a local folder on every backend: in-flight temp files of
    the local store, and the leases of folders being published (patched
    models, adapters), which ``gc`` reclaims after a crash.
    """

    url: str  # where the blobs live, as `--store` takes it
    tmp_dir: Path
    cache: ReadCache | None = None  # a local read-through copy of a remote store's blobs
    # Called once :meth:`writing` holds the lock: the registry checks there that the
    # catalog still points at this store (``store migrate`` may have moved it meanwhile).
    guard: Callable[[], None] | None = None

    # --- primitives a backend supplies -----------------------------------------

    @abc.abstractmethod
    def ensure(self) -> None:
        """Create what the store needs (folders; checks that a bucket answers)."""

    def probe(self) -> None:
        """Check that the store answers (a bucket exists and these credentials reach it).

        Raises:
            StoreUnavailableError: it does not.
        """
        self.ensure()

    @abc.abstractmethod
    def exists(self, sha: str) -> bool: ...

    @abc.abstractmethod
    def stored_head(self, sha: str) -> tuple[bytes, int] | None:
        """The first 5 stored bytes (the codec's magic) and the stored size; None if absent."""

    @abc.abstractmethod
    def read_stored(self, sha: str, scratch: _codec.Scratch | None = None) -> _codec.Buffer:
        """The stored (encoded) bytes as they are, unverified.

        Raises:
            IntegrityCheckError: the blob is missing, or its bytes could not be read whole.
        """

    @abc.abstractmethod
    def write_stored(self, sha: str, parts: list[bytes]) -> None:
        """Write-once: make the stored bytes visible under ``sha``, whole or not at all
        (an existing blob under that name is kept)."""

    @abc.abstractmethod
    def delete(self, sha: str) -> None: ...

    @abc.abstractmethod
    def iter_objects(self) -> Iterator[StoredObject]:
        """Every stored blob, in sha order."""

    @abc.abstractmethod
    def stale_temps(self, *, older_than_s: float = 3600.0) -> list[StaleTemp]:
        """Leftovers no live writer can still own (see the backends)."""

    @abc.abstractmethod
    def _lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]: ...

    # --- the contract -------------------------------------------------------------

    def iter_shas(self) -> Iterator[str]:
        return (o.sha256 for o in self.iter_objects())

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

    def install(self, sha: str, stored: bytes, *, codec: str, raw_size: int) -> BlobInfo:
        """Store bytes already encoded (and checked by the caller to decode to ``sha``'s payload)."""
        existing = self._existing(check_sha(sha), raw_size)
        if existing is not None:
            return existing
        self.write_stored(sha, [stored])
        return BlobInfo(sha, codec, raw_size, len(stored), sha256_hex(stored))

    def _write_new(self, blob: EncodedBlob) -> BlobInfo:
        # The digest of the very bytes written: recorded in the catalog, it lets the
        # first read of this blob skip re-hashing the payload, as later reads do
        # (see get); bytes changed since then get the full check.
        h = hashlib.sha256()
        for part in blob.parts:
            h.update(part)
        self.write_stored(blob.sha256, blob.parts)
        return BlobInfo(blob.sha256, blob.codec, blob.raw_size, blob.stored_size, h.hexdigest())

    def _existing(self, sha: str, raw_size: int) -> BlobInfo | None:
        head = self.stored_head(sha)
        if head is None:
            return None
        return BlobInfo(sha, _codec.codec_name(head[0]), raw_size, head[1])

    def get(self, sha: str, *, max_size: int | None = None, scratch: _codec.Scratch | None = None,
            stored_sha256: str | None = None,
            on_verified: Callable[[str], None] | None = None) -> bytes | bytearray | memoryview:  # fmt: skip
        """Read, decode and verify one blob (a writable memoryview for byte-grouped blobs: no copy).

        ``scratch``: reusable buffers for the stored bytes and the decoding (the
        result is then a view of it, valid until the scratch's next blob): they
        spare the page faults of fresh allocations for every blob.

        ``stored_sha256``: the sha256 of the stored bytes of this blob as this
        store wrote them, or as they once passed the full check (the catalog's
        ``blobs.stored_sha256``). When the bytes still hash to it, they are byte
        for byte an encoding of, or already seen to decode to, the payload named
        ``sha``, and decoding is deterministic: the payload is not hashed again
        (a third of the bytes to hash, or less). Otherwise the blob gets the
        full check, and a payload that still hashes to its name is returned;
        ``on_verified`` is then given the sha256 of the bytes just checked, for
        the caller to record.

        Raises:
            IntegrityCheckError: missing blob, undecodable bytes or a hash mismatch.
        """
        stored = self.read_stored(check_sha(sha), scratch)
        return verify_stored(sha, stored, max_size=max_size, scratch=scratch, stored_sha256=stored_sha256,
                             on_verified=on_verified)  # fmt: skip

    def check(self, sha: str, *, max_size: int | None = None) -> None:
        """The full check of the blob as the store holds it (no cache in between): for `verify`.

        Raises:
            IntegrityCheckError: missing blob, undecodable bytes or a hash mismatch.
        """
        verify_stored(sha, self.read_stored(check_sha(sha)), max_size=max_size)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing or reusing blobs until the catalog references them (shared)."""
        with self._lock(exclusive=False):
            if self.guard is not None:
                self.guard()
            yield

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """Hold while deciding which blobs are unreferenced and deleting them (exclusive)."""
        with self._lock(exclusive=True):
            yield

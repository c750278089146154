"""A checkpoint's identity: sha256 over (name, dtype, shape, bytes) of every tensor.

Computed from tensors, not file bytes, so re-sharding a checkpoint does not
change it. :class:`ContentHasher` computes it while a caller (extraction,
patching) reads the tensors anyway, so one read of the data serves both.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from ..errors import InvalidCheckpointError

if TYPE_CHECKING:
    from .reader import Checkpoint

_HASH_CHUNK = 16 << 20


class ContentHasher:
    """:meth:`Checkpoint.content_hash`, computed while a caller reads the tensors anyway.

    The caller visits tensors in name order: :meth:`begin` a tensor, then
    :meth:`update` with exactly its bytes, in order. Tensors it skips are read
    and hashed here, as is everything after the last one, by :meth:`hexdigest`.
    One read of the data serves both the caller and the identity.
    """

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._h = hashlib.sha256(b"safegene-checkpoint-v1\n")
        self._names = ckpt.names()
        self._next = 0
        self._owed = 0  # bytes of the current tensor still to come through update()
        self._fds: dict[str, int] = {}
        self._buf: memoryview | None = None

    def begin(self, name: str) -> None:
        self._skip_to(name)
        self._describe(name)
        self._owed = self.ckpt.tensors[name].nbytes

    def hash_before(self, name: str) -> None:
        """Hash (reading them here) the tensors before ``name`` not yet hashed: what
        :meth:`begin` would do first, done ahead, e.g. in another thread."""
        self._skip_to(name)

    def hash_from_file(self, name: str) -> None:
        """Hash tensor ``name`` (and any skipped before it) by reading it here."""
        self._skip_to(name)
        self._from_file(name)

    def _skip_to(self, name: str) -> None:
        self._settle()
        while self._next < len(self._names) and self._names[self._next] != name:
            self._from_file(self._names[self._next])
        if self._next == len(self._names):
            raise ValueError(f"{name} is not a later tensor of {self.ckpt.path}: tensors must come in name order")

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = memoryview(data).nbytes
        if n > self._owed:
            raise ValueError("more bytes than the current tensor holds")
        self._h.update(data)
        self._owed -= n

    def hexdigest(self, stop: threading.Event | None = None) -> str:
        """The content hash (``stop``: set from another thread to give up between tensors)."""
        self._settle()
        try:
            while self._next < len(self._names):
                if stop is not None and stop.is_set():
                    raise CancelledError(f"hashing {self.ckpt.path} was stopped")
                self._from_file(self._names[self._next])
        finally:
            self.close()
        return self._h.hexdigest()

    def close(self) -> None:
        """Close the files opened for skipped tensors (:meth:`hexdigest` does it too)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _settle(self) -> None:
        if self._owed:
            raise ValueError(f"{self._owed} bytes of the current tensor were never hashed")

    def _describe(self, name: str) -> None:
        info = self.ckpt.tensors[name]
        self._h.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0{info.nbytes}\n".encode())
        self._next += 1

    def _from_file(self, name: str) -> None:
        info = self.ckpt.tensors[name]
        self._describe(name)
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(self.ckpt.path / info.file, os.O_RDONLY)
        if self._buf is None:
            self._buf = memoryview(bytearray(_HASH_CHUNK))
        _hash_range(self._h, fd, info.start, info.nbytes, self._buf)


def pread_exact(fd: int, buf: bytearray, n: int, at: int, ck: Checkpoint, name: str) -> memoryview:
    """Read exactly ``n`` bytes at ``at`` into ``buf``; a file that ends early is an invalid checkpoint."""
    view, pos = memoryview(buf)[:n], 0
    while pos < n:
        got = os.preadv(fd, [view[pos:]], at + pos)
        if got <= 0:
            raise InvalidCheckpointError(ck.path, f"file ends inside {name}")
        pos += got
    return view


def _hash_range(h: Any, fd: int, start: int, length: int, buf: memoryview | None = None) -> None:
    # One reusable buffer (preadv into it, hash a view of it): no allocation per chunk.
    view = buf if buf is not None else memoryview(bytearray(min(_HASH_CHUNK, max(length, 1))))
    pos, remaining = start, length
    while remaining:
        n = os.preadv(fd, [view[: min(len(view), remaining)]], pos)
        if n <= 0:
            raise InvalidCheckpointError(f"fd {fd}", "file shrank while it was being hashed")
        h.update(view[:n])
        pos += n
        remaining -= n

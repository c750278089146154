"""Reading zstd frames without trusting them, and the body digest of a stored blob.

A frame's own content size is never believed: output is capped at the size
the blob header states, and a frame that yields more or fewer bytes is
refused without being inflated (:func:`decompress_capped`). The body digest
(blake2b-128, or sha256-128 with ``FLAG_SHA256``) makes any flipped byte of a
stored file fail before the payload hash is computed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import zstandard

from ..errors import IntegrityCheckError

FLAG_SHA256 = 1  # the body digest is sha256 (truncated), not blake2b
Buffer = bytes | bytearray | memoryview


def body_digest(body: Buffer, flags: int) -> bytes:
    if flags & FLAG_SHA256:
        return hashlib.sha256(body).digest()[:16]
    return hashlib.blake2b(body, digest_size=16).digest()


def check_digest(body: Buffer, digest: bytes, flags: int) -> None:
    if body_digest(body, flags) != digest:
        raise IntegrityCheckError("blob body does not match its recorded digest")


def decompress_capped(body: Buffer, raw_size: int, dest: np.ndarray[Any, Any] | None = None) -> Buffer:
    """Decompress one frame of exactly ``raw_size`` bytes, into ``dest`` when given (else a fresh buffer).

    zstd writes into the destination and can never write past it; one more
    read must then find the frame's end, so a frame that yields more or fewer
    bytes than the header says is refused without being inflated.
    """
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError as exc:
        raise IntegrityCheckError(f"blob body is not a zstd frame: {exc}") from None
    if params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, raw_size):
        raise IntegrityCheckError(
            f"zstd frame claims {params.content_size} bytes, header says {raw_size}"
        )
    if dest is None and params.content_size != raw_size:
        return decompress_unsized(body, raw_size)
    if dest is None:
        # Nowhere given to decompress into, and the frame states the expected size:
        # one exact-size allocation, and zstd itself fails on more or fewer bytes.
        try:
            data = zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_size)
        except zstandard.ZstdError as exc:
            raise IntegrityCheckError(f"blob body does not decompress: {exc}") from None
        if len(data) != raw_size:
            raise IntegrityCheckError(f"blob decompressed to {len(data)} bytes, expected {raw_size}")
        return data
    view, got = dest.data, 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=False, read_size=1 << 20)
        while got < raw_size:
            n = reader.readinto(view[got:])
            if not n:
                break
            got += n
        extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise IntegrityCheckError(f"blob body does not decompress: {exc}") from None
    if got != raw_size or extra:
        raise IntegrityCheckError(f"blob decompressed to {'more than ' if extra else ''}{got} bytes, expected {raw_size}")
    return view


def states_size(frame: Buffer, size: int) -> bool:
    try:
        return bool(zstandard.get_frame_parameters(frame).content_size == size)
    except zstandard.ZstdError:
        return False


def decompress_unsized(body: Buffer, raw_size: int) -> bytes:
    # A frame that does not state its size (not written by this codec): read it in
    # chunks and stop one byte past the expected size, so memory grows only with
    # what the frame really yields.
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=False)
    chunks, got = [], 0
    try:
        while got <= raw_size:
            chunk = reader.read(min(raw_size + 1 - got, 64 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except zstandard.ZstdError as exc:
        raise IntegrityCheckError(f"blob body does not decompress: {exc}") from None
    if got != raw_size:
        raise IntegrityCheckError(f"blob decompressed to {got} bytes, expected {raw_size}")
    return b"".join(chunks)

"""Blob codecs: how a canonical payload is stored on disk.

Every encoded blob is self-describing::

    b"SGB1" | codec id (u8) | width (u8) | reserved (u16, zero) | skip (u32)
    | raw size (u64) | blake2b-128 of the body (16 bytes)
    | body: one (u64 length, zstd frame) per segment

A codec splits the payload into segments and compresses each as its own zstd
frame, so each gets its own entropy tables. ``zstd`` has one segment.
``zstd-bytegroup`` keeps the first ``skip`` bytes (a safetensors header) as one
segment and splits the rest, words of ``width`` bytes (bf16/fp16/fp32), into
byte planes after rotating each word left by one bit: the sign moves to the
lowest bit and the top byte holds exactly the 8 exponent bits of a bf16/fp32
value. Exponents of trained weights and of fine-tune deltas take few values
while mantissas look random (ZipNN's observation), so the exponent plane
compresses well and the mantissa planes are left to be what they are.

The body digest makes any flipped byte of a stored file fail loudly, even one
zstd would ignore; the payload's sha256 (the blob's name) is checked by the
store on top. Decoding never trusts a frame's own content size: each segment's
size follows from the header and output is capped at it, so a lying frame
cannot balloon memory.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zstandard

from .errors import IntegrityCheckError

MAGIC = b"SGB1"
_HEADER = struct.Struct("<4sBBHIQ16s")
_LEN = struct.Struct("<Q")
LEVEL = 3
_THREADS_MIN_BYTES = 8 << 20  # below this zstd's worker threads cost more than they win
_UINT: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_WORKERS = min(4, os.cpu_count() or 1)
_CHUNK_WORDS = 1 << 18  # 1 MiB of fp32 words: the shift buffer stays in cache
Buffer = bytes | bytearray | memoryview


class Codec(abc.ABC):
    """Turns a payload into stored bytes and back, losslessly."""

    name: str
    codec_id: int

    @abc.abstractmethod
    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        """Reversible split of the payload into segments compressed separately."""

    @abc.abstractmethod
    def join(self, segments: list[bytes], *, skip: int, width: int) -> bytes:
        """Inverse of :meth:`split`."""

    @abc.abstractmethod
    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        """Sizes of the segments of a payload of ``raw_size`` bytes."""

    def segment_makers(self, payload: Buffer, *, skip: int, width: int) -> list[Callable[[], Buffer]]:
        """One independent function per segment of :meth:`split`, in order (run them in any thread)."""
        segs = self.split(payload, skip=skip, width=width)  # type: ignore[arg-type]
        return [functools.partial(lambda x: x, seg) for seg in segs]

    level: int = LEVEL

    def encode(self, payload: Buffer, *, skip: int = 0, width: int = 1, level: int | None = None) -> bytes:
        lvl = self.level if level is None else level
        makers = self.segment_makers(payload, skip=skip, width=width)
        if len(makers) > 1 and len(payload) >= _THREADS_MIN_BYTES:
            # Segments (byte planes) are made and compressed concurrently, one
            # single-threaded zstd per plane; measured faster here than zstd's own
            # worker threads, which split one frame into jobs.
            def work(make: Callable[[], Buffer]) -> bytes:
                return zstandard.ZstdCompressor(level=lvl, write_content_size=True).compress(make())

            with ThreadPoolExecutor(_WORKERS, thread_name_prefix="safegene-codec") as pool:
                futures = [pool.submit(work, make) for make in makers]
                return self._assemble((f.result() for f in futures), payload_len=len(payload), skip=skip, width=width)
        threads = -1 if len(payload) >= _THREADS_MIN_BYTES else 0
        cctx = zstandard.ZstdCompressor(level=lvl, threads=threads, write_content_size=True)
        return self._assemble((cctx.compress(make()) for make in makers), payload_len=len(payload), skip=skip,
                              width=width)  # fmt: skip

    def _assemble(self, frames: Iterable[bytes], *, payload_len: int, skip: int, width: int) -> bytes:
        # Frames are digested as they arrive (overlapping the others' compression)
        # and joined once: no intermediate body copy.
        h = hashlib.blake2b(digest_size=16)
        parts: list[bytes] = [b""]
        for frame in frames:
            size = _LEN.pack(len(frame))
            h.update(size)
            h.update(frame)
            parts += [size, frame]
        parts[0] = _HEADER.pack(MAGIC, self.codec_id, width, 0, skip, payload_len, h.digest())
        return b"".join(parts)

    def decode_body(self, body: bytes, *, raw_size: int, skip: int, width: int) -> bytes:
        frames, pos = [], 0
        view = memoryview(body)
        sizes = self.segment_sizes(raw_size, skip=skip, width=width)
        for _ in sizes:
            if pos + _LEN.size > len(body):
                raise IntegrityCheckError("blob body ends before its last segment")
            (n,) = _LEN.unpack_from(body, pos)
            frame = view[pos + _LEN.size : pos + _LEN.size + n]
            if len(frame) != n:
                raise IntegrityCheckError("blob segment runs past the end of the body")
            frames.append(frame)
            pos += _LEN.size + n
        if pos != len(body):
            raise IntegrityCheckError("blob body has trailing bytes")
        if len(frames) > 1 and raw_size >= _THREADS_MIN_BYTES:
            with ThreadPoolExecutor(_WORKERS, thread_name_prefix="safegene-codec") as pool:
                segments = list(pool.map(_decompress_capped, frames, sizes))
        else:
            segments = [_decompress_capped(f, n) for f, n in zip(frames, sizes, strict=True)]
        return self.join(segments, skip=skip, width=width)


class ZstdCodec(Codec):
    """Plain zstd; the fallback for payloads that are not 2- or 4-byte floats."""

    name = "zstd"
    codec_id = 1

    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        return [payload]

    def join(self, segments: list[bytes], *, skip: int, width: int) -> bytes:
        return segments[0]

    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        return [raw_size]


class ByteGroupedZstdCodec(Codec):
    """zstd over sign-rotated byte planes of 16- or 32-bit floats (lossless)."""

    name = "zstd-bytegroup"
    codec_id = 2
    # Measured on fp32 fine-tune deltas (benchmarks/scale.py): level 1 compresses the
    # exponent plane *better* than level 3 (2.78 vs 2.47) and ~1.6x faster; the
    # mantissa planes come out the same. The level is not part of the format.
    level = 1

    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        return [bytes(make()) for make in self.segment_makers(payload, skip=skip, width=width)]

    def segment_makers(self, payload: Buffer, *, skip: int, width: int) -> list[Callable[[], Buffer]]:
        words = np.frombuffer(payload, dtype=_UINT[width], offset=skip)
        head = memoryview(payload)[:skip]
        makers: list[Callable[[], Buffer]] = [lambda: head]
        return makers + [functools.partial(_plane, words, k, width) for k in reversed(range(width))]

    def join(self, segments: list[bytes], *, skip: int, width: int) -> bytes:
        n = len(segments[1]) if len(segments) > 1 else 0
        out = bytearray(skip + n * width)
        out[:skip] = segments[0]
        # Scatter each plane into its byte column of the rotated words, then
        # rotate right by one bit in place, chunk by chunk.
        columns = np.frombuffer(out, dtype=np.uint8, offset=skip).reshape(-1, width)
        for k, plane in enumerate(reversed(segments[1:])):
            columns[:, k] = np.frombuffer(plane, dtype=np.uint8)
        words = np.frombuffer(out, dtype=_UINT[width], offset=skip)
        tmp = np.empty(min(n, _CHUNK_WORDS), dtype=words.dtype)
        top = 8 * width - 1
        for s in range(0, n, _CHUNK_WORDS):
            w = words[s : s + _CHUNK_WORDS]
            t = tmp[: w.size]
            np.right_shift(w, 1, out=t)
            w <<= top
            w |= t
        return bytes(out)

    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        return [skip] + [(raw_size - skip) // width] * width


def _plane(words: np.ndarray[Any, Any], k: int, width: int) -> memoryview:
    # Byte k of the rotated word is (w >> (8k - 1)) & 0xff for k > 0 and
    # ((w << 1) | (w >> top)) & 0xff for k = 0: one shift into a small reused
    # buffer and one narrowing copy, chunk by chunk (the chunk stays in cache),
    # instead of a rotated copy of the payload plus a strided gather per plane.
    plane = np.empty(words.size, dtype=np.uint8)
    tmp = np.empty(min(words.size, _CHUNK_WORDS), dtype=words.dtype)
    top = 8 * width - 1
    for s in range(0, words.size, _CHUNK_WORDS):
        w = words[s : s + _CHUNK_WORDS]
        t = tmp[: w.size]
        if k:
            np.right_shift(w, 8 * k - 1, out=t)
        else:
            np.left_shift(w, 1, out=t)
            t |= w >> top
        np.copyto(plane[s : s + w.size], t, casting="unsafe")
    return plane.data


CODECS: dict[str, Codec] = {c.name: c for c in (ZstdCodec(), ByteGroupedZstdCodec())}
_BY_ID = {c.codec_id: c for c in CODECS.values()}


def choose_codec(payload_len: int, *, skip: int, width: int) -> Codec:
    """Byte grouping when the body splits into whole ``width``-byte words."""
    if width in (2, 4) and (payload_len - skip) % width == 0 and payload_len > skip:
        return CODECS["zstd-bytegroup"]
    return CODECS["zstd"]


def encode(payload: bytes, *, skip: int = 0, width: int = 1, codec: str | None = None) -> tuple[str, bytes]:
    """Encode ``payload``; returns (codec name, stored bytes)."""
    c = CODECS[codec] if codec else choose_codec(len(payload), skip=skip, width=width)
    if c.name == "zstd":
        width, skip = 1, 0
    return c.name, c.encode(payload, skip=skip, width=width)


def decode(stored: bytes, *, max_size: int | None = None) -> bytes:
    """Decode a stored blob (self-describing header).

    Args:
        stored: the bytes of a blob file.
        max_size: refuse a header claiming more raw bytes than this.

    Raises:
        IntegrityCheckError: bad magic, unknown codec, a size that lies.
    """
    if len(stored) < _HEADER.size:
        raise IntegrityCheckError("blob is shorter than its header")
    magic, cid, width, reserved, skip, raw_size, digest = _HEADER.unpack_from(stored)
    if magic != MAGIC or cid not in _BY_ID or width not in (1, 2, 4) or reserved or skip > raw_size:
        raise IntegrityCheckError("blob header is not a SafeGene blob header")
    body = stored[_HEADER.size :]
    if _digest(body) != digest:
        raise IntegrityCheckError("blob body does not match its recorded digest")
    if max_size is not None and raw_size > max_size:
        raise IntegrityCheckError(f"blob claims {raw_size} bytes, more than the {max_size} allowed")
    if (cid == ByteGroupedZstdCodec.codec_id) != (width > 1) or (width > 1 and (raw_size - skip) % width):
        raise IntegrityCheckError("blob header width does not fit its codec and size")
    return _BY_ID[cid].decode_body(body, raw_size=raw_size, skip=skip, width=width)


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _decompress_capped(body: Buffer, raw_size: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError as exc:
        raise IntegrityCheckError(f"blob body is not a zstd frame: {exc}") from None
    if params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, raw_size):
        raise IntegrityCheckError(
            f"zstd frame claims {params.content_size} bytes, header says {raw_size}"
        )
    dctx = zstandard.ZstdDecompressor()
    try:
        if params.content_size == raw_size:
            # The frame states its size and it is the expected one: one exact-size
            # allocation, and zstd itself fails if the frame produces more or less.
            data = dctx.decompress(body, max_output_size=raw_size)
            if len(data) != raw_size:
                raise IntegrityCheckError(f"blob decompressed to {len(data)} bytes, expected {raw_size}")
            return data
        reader = dctx.stream_reader(body, read_across_frames=False)
        chunks, got = [], 0
        while got <= raw_size:
            chunk = reader.read(min(raw_size + 1 - got, 64 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
    except zstandard.ZstdError as exc:
        raise IntegrityCheckError(f"blob body does not decompress: {exc}") from None
    if len(data) != raw_size:
        raise IntegrityCheckError(f"blob decompressed to {len(data)} bytes, expected {raw_size}")
    return data

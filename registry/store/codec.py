"""Blob codecs: how a canonical payload is stored on disk.

Every encoded blob is self-describing::

    b"SGB1" | codec id (u8) | width (u8) | flags (u16) | skip (u32)
    | raw size (u64) | digest of the body (16 bytes)
    | body: one (u64 length, zstd frame) per segment

A codec splits the payload into segments and compresses each as its own zstd
frame, so each gets its own entropy tables. ``zstd`` has one segment.
``zstd-bytegroup`` keeps the first ``skip`` bytes (a safetensors header) as one
segment and splits the rest, words of ``width`` bytes (bf16/fp16/fp32), into
byte planes so that the top byte holds exactly the 8 exponent bits of a
bf16/fp32 value. Exponents of trained weights and of fine-tune deltas take
few values while mantissas look random (ZipNN's observation), so the exponent
plane compresses well and the mantissa planes are left to be what they are.
``zstd-bytegroup-v2`` (written now) rotates the word's top 9 bits left by one:
the sign becomes the top bit of the second byte, beside the highest (random)
mantissa bits. ``zstd-bytegroup`` (still read) rotated the whole word, which
put the sign into the lowest byte: a delta of two bf16 checkpoints has no
low mantissa bits, so that byte was random signs among zeros, the plane
costliest to compress; now it is all zeros. How a frame is compressed is
not part of the format: the exponent plane's frame is written through zstd's
C API with Huffman-coded literals and a sparse match search
(``_zstd_literals``), the other planes with python-zstandard's C backend.

The body digest is sha256 truncated to 16 bytes when flag bit 0 is set (what
is written now: SHA-NI makes it twice as fast as blake2b here), blake2b-128
when it is clear (blobs written before); other flag bits are refused. The
body digest makes any flipped byte of a stored file fail loudly, even one
zstd would ignore; the payload's sha256 (the blob's name) is checked by the
store on top. Decoding never trusts a frame's own content size: each segment's
size follows from the header and output is capped at it, so a lying frame
cannot balloon memory.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import itertools
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zstandard

from ..errors import IntegrityCheckError
from . import _zstd_literals
from ._frames import FLAG_SHA256, Buffer, check_digest, decompress_capped, states_size
from ._planes import CHUNK_WORDS, join_v1, join_v2, plane_v1, plane_v2

MAGIC = b"SGB1"
_HEADER = struct.Struct("<4sBBHIQ16s")
_LEN = struct.Struct("<Q")
LEVEL = 3
_THREADS_MIN_BYTES = 8 << 20  # below this zstd's worker threads cost more than they win
_UINT: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_CORES = os.cpu_count() or 1
_WORKERS = min(4, _CORES)
_ZSTD_THREADS = max(2, min(4, _CORES))  # zstd workers per frame: as many as cores measured best (2 cores: 750 MB/s vs 700 with 3, 585 with 1)


def _plane_threads(planes: int) -> int:
    """zstd workers per plane when ``planes`` are compressed side by side: none
    unless the cores outnumber the planes at least twice (then the extra CPU of
    zstd's jobs buys wall time on otherwise idle cores)."""
    per = _CORES // max(1, min(planes, _WORKERS))
    return min(4, per) if planes > 1 and per >= 2 else 0


class Scratch:
    """Reusable buffers for decoding one blob at a time: its stored bytes, its planes, its payload.

    A blob decoded with a scratch is a view of the scratch, valid until the same
    scratch decodes the next one. Reusing the buffers spares a fresh allocation's
    page faults for every blob (and lets zstd decompress straight into place).
    """

    RESULT = "payload"  # the one buffer a decoded blob views; the others are needed only while decoding

    def __init__(self, *, transient_from: Scratch | None = None) -> None:
        """``transient_from``: take the buffers needed only while decoding from that scratch
        (scratches that never decode at the same time can share them)."""
        self._bufs: dict[str, np.ndarray[Any, Any]] = {}
        self._transient = transient_from

    def take(self, key: str, size: int) -> np.ndarray[Any, Any]:
        """``size`` bytes of the buffer ``key`` (grown when too small; contents undefined)."""
        if self._transient is not None and key != self.RESULT:
            return self._transient.take(key, size)
        buf = self._bufs.get(key)
        if buf is None or buf.size < size:
            self._bufs.pop(key, None)  # free the old one before the larger one is made
            self._bufs[key] = buf = np.empty(size, dtype=np.uint8)
        return buf[:size]


class Codec(abc.ABC):
    """Turns a payload into stored bytes and back, losslessly."""

    name: str
    codec_id: int
    # True when join() copies the segments into a new payload (they may live in a scratch).
    _segments_are_scratch = False

    @abc.abstractmethod
    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        """Reversible split of the payload into segments compressed separately."""

    @abc.abstractmethod
    def join(self, segments: list[Buffer], *, skip: int, width: int, pool: ThreadPoolExecutor | None = None,
             scratch: Scratch | None = None) -> Buffer:  # fmt: skip
        """Inverse of :meth:`split` (``pool``: threads it may use; ``scratch``: where the result may go)."""

    @abc.abstractmethod
    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        """Sizes of the segments of a payload of ``raw_size`` bytes."""

    def segment_chunks(self, payload: Buffer, *, skip: int, width: int) -> list[Callable[[], Iterator[Any]]]:
        """Per segment of :meth:`split`, in order, a function yielding its bytes in consecutive chunks.

        A chunk may view a buffer the iterator reuses: it must be used before the next is asked for.
        """
        return [functools.partial(iter, [seg]) for seg in self.split(payload, skip=skip, width=width)]  # type: ignore[arg-type]

    def compressor(self, *, threads: int = 0) -> zstandard.ZstdCompressor:
        """The zstd compressor for this codec's segments (settings are not part of the format)."""
        return zstandard.ZstdCompressor(level=LEVEL, threads=threads, write_content_size=True)

    def frame_compressor(self, index: int, size: int, *, threads: int = 0) -> Any:
        """The streaming compressor (``compress``/``flush``) for segment ``index``, of ``size`` bytes."""
        return self.compressor(threads=threads).compressobj(size=size)

    def costliest_first(self, segments: int, width: int) -> list[int]:
        """Segment indices in the order to compress them side by side: the costliest first, so
        that the workers finish together."""
        return list(range(segments))

    def encode(self, payload: Buffer, *, skip: int = 0, width: int = 1, level: int | None = None) -> bytes:
        """Encode ``payload``; ``level``: a plain zstd level instead of this codec's settings (comparisons)."""
        return b"".join(self.encode_parts(payload, skip=skip, width=width, level=level))

    def encode_parts(self, payload: Buffer, *, skip: int = 0, width: int = 1, level: int | None = None) -> list[bytes]:
        """:meth:`encode`'s bytes as consecutive parts (header, then each frame's length and its pieces)."""
        payload = memoryview(payload).cast("B")  # sizes and slices in bytes, whatever the buffer's format
        big = len(payload) >= _THREADS_MIN_BYTES
        segments = list(zip(self.segment_sizes(len(payload), skip=skip, width=width),
                            self.segment_chunks(payload, skip=skip, width=width), strict=True))  # fmt: skip
        # Several large segments (byte planes) are compressed side by side, one
        # compressor each (single-threaded unless cores outnumber the planes twice:
        # _plane_threads); one large segment uses zstd's own workers.
        # Measured on the scale benchmark's planes: zstd's workers cost 45 % more
        # CPU than one thread for the same frame (jobs of 4 MiB, each reloading
        # its window), which extraction, CPU-bound on 2 cores, pays in full.
        planes = sum(size >= _THREADS_MIN_BYTES // width for size, _ in segments) if big else 0
        parallel = planes > 1
        threads = _ZSTD_THREADS if big and not parallel else _plane_threads(planes)

        def frame(index: int, size: int, chunks: Callable[[], Iterator[Any]]) -> list[bytes]:
            # Streamed into its frame chunk by chunk as it is made (a plane never
            # exists whole); the frame still states its size.
            if level is None:
                obj = self.frame_compressor(index, size, threads=threads)
            else:
                obj = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=True).compressobj(size=size)
            pieces = [out for chunk in chunks() if (out := obj.compress(chunk))]
            pieces.append(obj.flush())
            return pieces

        if not parallel:
            return self._assemble((frame(i, *seg) for i, seg in enumerate(segments)), payload_len=len(payload),
                                  skip=skip, width=width)  # fmt: skip
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="safegene-codec") as pool:
            futures = {i: pool.submit(frame, i, *segments[i]) for i in self.costliest_first(len(segments), width)}
            return self._assemble((futures[i].result() for i in range(len(segments))), payload_len=len(payload),
                                  skip=skip, width=width)  # fmt: skip

    def _assemble(self, frames: Iterable[list[bytes]], *, payload_len: int, skip: int, width: int) -> list[bytes]:
        # Frames are digested as they complete (overlapping the next one's compression);
        # the parts are returned, not joined: a writer writes them as they are.
        h = hashlib.sha256()
        parts: list[bytes] = [b""]
        for pieces in frames:
            size = _LEN.pack(sum(map(len, pieces)))
            h.update(size)
            for piece in pieces:
                h.update(piece)
            parts += [size, *pieces]
        parts[0] = _HEADER.pack(MAGIC, self.codec_id, width, FLAG_SHA256, skip, payload_len, h.digest()[:16])
        return parts

    def decode_body(self, body: Buffer, *, raw_size: int, skip: int, width: int, digest: bytes | None = None,
                    flags: int = FLAG_SHA256, scratch: Scratch | None = None) -> Buffer:  # fmt: skip
        """Decode a blob body; when ``digest`` is given it is checked, concurrently with decompression."""
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
        area = None
        if scratch is not None and self._segments_are_scratch and all(map(states_size, frames, sizes)):
            # Segments decompress into place, into the scratch's segment buffer (the
            # codec rebuilds the payload from them; they are not returned). Only
            # when every frame states the size the header gives it: nothing is
            # allocated on the header's word alone.
            area = scratch.take("segments", sum(sizes))
        offsets = list(itertools.accumulate(sizes, initial=0))
        dests = [area[o : o + n] if area is not None else None for o, n in zip(offsets, sizes, strict=False)]
        if len(frames) > 1 and raw_size >= _THREADS_MIN_BYTES:
            # The body digest runs beside the frames' decompression (hashlib and zstd
            # release the GIL); nothing decoded is returned before it is checked.
            with ThreadPoolExecutor(_WORKERS, thread_name_prefix="safegene-codec") as pool:
                checked = pool.submit(check_digest, view, digest, flags) if digest is not None else None
                segments = list(pool.map(decompress_capped, frames, sizes, dests))
                if checked is not None:
                    checked.result()
                return self.join(segments, skip=skip, width=width, pool=pool, scratch=scratch)
        if digest is not None:
            check_digest(view, digest, flags)
        segments = [decompress_capped(f, n, d) for f, n, d in zip(frames, sizes, dests, strict=True)]
        return self.join(segments, skip=skip, width=width, scratch=scratch)


class ZstdCodec(Codec):
    """Plain zstd; the fallback for payloads that are not 2- or 4-byte floats."""

    name = "zstd"
    codec_id = 1

    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        return [payload]

    def join(self, segments: list[Buffer], *, skip: int, width: int, pool: ThreadPoolExecutor | None = None,
             scratch: Scratch | None = None) -> Buffer:  # fmt: skip
        return segments[0]

    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        return [raw_size]


class ByteGroupedZstdCodec(Codec):
    """zstd over sign-rotated byte planes of 16- or 32-bit floats (lossless)."""

    name = "zstd-bytegroup"
    codec_id = 2
    # Byte planes hold few long matches: zstd's fast strategy with a small
    # (cache-resident) hash table and 7-byte minimum matches wastes less time looking
    # for them. Measured on fp32 fine-tune deltas (benchmarks/RESULTS.md): ratio
    # 3.17 vs 3.09 for level 1 (2.47 for level 3) at ~1.35x level 1's speed. The
    # literals (most of a plane) are still Huffman-coded. hash_log 6 (zstd's
    # smallest): the exponent plane 10 % faster than with 8, ratio 3.25 -> 3.28 (v2 planes).
    _PARAM_ARGS: dict[str, Any] = dict(
        window_log=17, chain_log=6, hash_log=6, search_log=1, min_match=7, target_length=0,
        strategy=zstandard.STRATEGY_FAST, write_content_size=True,
    )  # fmt: skip
    _PARAMS = zstandard.ZstdCompressionParameters(**_PARAM_ARGS)

    def compressor(self, *, threads: int = 0) -> zstandard.ZstdCompressor:
        if not threads:
            return zstandard.ZstdCompressor(compression_params=self._PARAMS)
        return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
            **self._PARAM_ARGS, threads=threads, job_size=4 << 20))  # fmt: skip

    def frame_compressor(self, index: int, size: int, *, threads: int = 0) -> Any:
        # Segment 1 is the top plane, the exponents: Huffman-coded literals with a
        # sparse match search (_zstd_literals), faster and smaller than the settings
        # above. The mantissa planes gain nothing from it (measured).
        if index == 1 and _zstd_literals.AVAILABLE:
            return _zstd_literals.LiteralsCompressor(size, _zstd_literals.exponent_params(threads))
        return super().frame_compressor(index, size, threads=threads)

    # The word's bit layout: True, the top 9 bits rotated (v2); False, the whole word rotated (v1).
    _sign_beside_mantissa = False
    _segments_are_scratch = True

    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        return [b"".join(bytes(c) for c in chunks()) for chunks in self.segment_chunks(payload, skip=skip, width=width)]

    def segment_chunks(self, payload: Buffer, *, skip: int, width: int) -> list[Callable[[], Iterator[Any]]]:
        words = np.frombuffer(payload, dtype=_UINT[width], offset=skip)
        head = memoryview(payload)[:skip]
        plane = plane_v2 if self._sign_beside_mantissa else plane_v1
        return [functools.partial(iter, [head])] + [functools.partial(plane, words, k, width)
                                                    for k in reversed(range(width))]  # fmt: skip

    def join(self, segments: list[Buffer], *, skip: int, width: int, pool: ThreadPoolExecutor | None = None,
             scratch: Scratch | None = None) -> Buffer:  # fmt: skip
        # Returns a writable memoryview of bytes (no final copy). Words are rebuilt from the planes
        # chunk by chunk in cache, ranges of chunks in parallel when a pool is given.
        n = len(segments[1]) if len(segments) > 1 else 0
        # np.empty, not bytearray(size): bytearray zero-fills every page in this
        # thread first; here each worker faults in the pages it writes.
        size = skip + n * width
        out = scratch.take(Scratch.RESULT, size) if scratch is not None else np.empty(size, dtype=np.uint8)
        out[:skip] = np.frombuffer(segments[0], dtype=np.uint8)
        words = out[skip:].view(_UINT[width])
        planes = [np.frombuffer(p, dtype=np.uint8) for p in reversed(segments[1:])]  # low byte first
        join = join_v2 if self._sign_beside_mantissa else join_v1
        if pool is None or n < 2 * CHUNK_WORDS:
            join(words, planes, 0, n)
        else:
            step = -(-n // (2 * _WORKERS * CHUNK_WORDS)) * CHUNK_WORDS
            list(pool.map(lambda s: join(words, planes, s, min(n, s + step)), range(0, n, step)))
        return out.data

    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        return [skip] + [(raw_size - skip) // width] * width


class SignPlaneZstdCodec(ByteGroupedZstdCodec):
    """:class:`ByteGroupedZstdCodec` with the sign beside the top mantissa bits (what is written now).

    On the scale benchmark's fp32 deltas: ratio 3.18 → 3.30 and ~1.35× the
    compression speed, because the lowest plane became all zeros.
    """

    name = "zstd-bytegroup-v2"
    codec_id = 3
    _sign_beside_mantissa = True

    def costliest_first(self, segments: int, width: int) -> list[int]:
        # fp32 words: after the (tiny) header, the third plane from the top (bits 8-15)
        # costs most, ~40 % of the payload's zstd time on fine-tune deltas, where it is
        # mostly zeros whose runs zstd's match search finds; then the exponents, the
        # top mantissa bits, the lowest byte.
        if width == 4 and segments == 5:
            return [0, 3, 1, 2, 4]
        return super().costliest_first(segments, width)


CODECS: dict[str, Codec] = {c.name: c for c in (ZstdCodec(), ByteGroupedZstdCodec(), SignPlaneZstdCodec())}
_BY_ID = {c.codec_id: c for c in CODECS.values()}


def codec_name(stored: Buffer) -> str:
    """The codec a blob's header names, or ``"unknown"`` (reads the first 5 bytes only)."""
    head = bytes(memoryview(stored)[:5])
    if len(head) == 5 and head[:4] == MAGIC and head[4] in _BY_ID:
        return _BY_ID[head[4]].name
    return "unknown"


def choose_codec(payload_len: int, *, skip: int, width: int) -> Codec:
    """Byte grouping when the body splits into whole ``width``-byte words."""
    if width in (2, 4) and (payload_len - skip) % width == 0 and payload_len > skip:
        return CODECS["zstd-bytegroup-v2"]
    return CODECS["zstd"]


def encode(payload: Buffer, *, skip: int = 0, width: int = 1, codec: str | None = None) -> tuple[str, bytes]:
    """Encode ``payload``; returns (codec name, stored bytes)."""
    name, parts = encode_parts(payload, skip=skip, width=width, codec=codec)
    return name, b"".join(parts)


def encode_parts(payload: Buffer, *, skip: int = 0, width: int = 1,
                 codec: str | None = None) -> tuple[str, list[bytes]]:  # fmt: skip
    """Like :func:`encode`, the stored bytes as consecutive parts (no copy into one buffer)."""
    size = memoryview(payload).nbytes
    c = CODECS[codec] if codec else choose_codec(size, skip=skip, width=width)
    if c.name == "zstd":
        width, skip = 1, 0
    return c.name, c.encode_parts(payload, skip=skip, width=width)


def decode(stored: Buffer, *, max_size: int | None = None, scratch: Scratch | None = None,
           check_digest: bool = True) -> Buffer:  # fmt: skip
    """Decode a stored blob (self-describing header): ``bytes``, or a writable byte memoryview when byte-grouped.

    Args:
        stored: the bytes of a blob file.
        max_size: refuse a header claiming more raw bytes than this (checked before anything is allocated).
        scratch: reusable buffers; a byte-grouped result is then a view of it.
        check_digest: False only when the caller has verified the stored bytes already.

    Raises:
        IntegrityCheckError: bad magic, unknown codec, a size that lies.
    """
    if len(stored) < _HEADER.size:
        raise IntegrityCheckError("blob is shorter than its header")
    magic, cid, width, flags, skip, raw_size, digest = _HEADER.unpack_from(stored)
    if magic == MAGIC and cid not in _BY_ID:
        raise IntegrityCheckError(f"blob is stored with codec id {cid}, which this version of safegene cannot read "
                                  "(written by a newer version, or damaged); upgrade safegene, or restore the blob")  # fmt: skip
    if (magic != MAGIC or width not in (1, 2, 4) or flags & ~FLAG_SHA256 or skip > raw_size
            or raw_size >= 1 << 62):  # no payload is that large (and 2**64 - 1 means "unknown" to zstd)
        raise IntegrityCheckError("blob header is not a SafeGene blob header")
    body = memoryview(stored)[_HEADER.size :]
    if max_size is not None and raw_size > max_size:
        raise IntegrityCheckError(f"blob claims {raw_size} bytes, more than the {max_size} allowed")
    if isinstance(_BY_ID[cid], ByteGroupedZstdCodec) != (width > 1) or (width > 1 and (raw_size - skip) % width):
        raise IntegrityCheckError("blob header width does not fit its codec and size")
    return _BY_ID[cid].decode_body(body, raw_size=raw_size, skip=skip, width=width,
                                   digest=digest if check_digest else None, flags=flags, scratch=scratch)  # fmt: skip

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
import hashlib
import struct

import numpy as np
import zstandard

from .errors import IntegrityCheckError

MAGIC = b"SGB1"
_HEADER = struct.Struct("<4sBBHIQ16s")
_LEN = struct.Struct("<Q")
LEVEL = 3
_THREADS_MIN_BYTES = 8 << 20  # below this zstd's worker threads cost more than they win
_UINT = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


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

    def encode(self, payload: bytes, *, skip: int = 0, width: int = 1, level: int = LEVEL) -> bytes:
        threads = -1 if len(payload) >= _THREADS_MIN_BYTES else 0
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=True)
        frames = [cctx.compress(seg) for seg in self.split(payload, skip=skip, width=width)]
        body = b"".join(_LEN.pack(len(f)) + f for f in frames)
        return _HEADER.pack(MAGIC, self.codec_id, width, 0, skip, len(payload), _digest(body)) + body

    def decode_body(self, body: bytes, *, raw_size: int, skip: int, width: int) -> bytes:
        segments, pos = [], 0
        for size in self.segment_sizes(raw_size, skip=skip, width=width):
            if pos + _LEN.size > len(body):
                raise IntegrityCheckError("blob body ends before its last segment")
            (n,) = _LEN.unpack_from(body, pos)
            frame = body[pos + _LEN.size : pos + _LEN.size + n]
            if len(frame) != n:
                raise IntegrityCheckError("blob segment runs past the end of the body")
            segments.append(_decompress_capped(frame, size))
            pos += _LEN.size + n
        if pos != len(body):
            raise IntegrityCheckError("blob body has trailing bytes")
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

    def split(self, payload: bytes, *, skip: int, width: int) -> list[bytes]:
        words = np.frombuffer(payload, dtype=_UINT[width], offset=skip)
        rotated = (words << 1) | (words >> (8 * width - 1))
        planes = rotated.view(np.uint8).reshape(-1, width).T
        return [payload[:skip]] + [planes[i].tobytes() for i in reversed(range(width))]

    def join(self, segments: list[bytes], *, skip: int, width: int) -> bytes:
        planes = np.stack([np.frombuffer(p, dtype=np.uint8) for p in reversed(segments[1:])], axis=1)
        words = np.ascontiguousarray(planes).view(_UINT[width]).reshape(-1)
        restored = (words >> 1) | (words << (8 * width - 1))
        return segments[0] + restored.astype(_UINT[width]).tobytes()

    def segment_sizes(self, raw_size: int, *, skip: int, width: int) -> list[int]:
        return [skip] + [(raw_size - skip) // width] * width


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


def _decompress_capped(body: bytes, raw_size: int) -> bytes:
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

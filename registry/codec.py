"""Blob codecs: how a canonical payload is stored on disk.

Every encoded blob is self-describing::

    b"SGB1" | codec id (u8) | width (u8) | reserved (u16, zero) | skip (u32)
    | raw size (u64) | blake2b-128 of the frame (16 bytes) | zstd frame

``skip`` leading bytes (a safetensors header) are kept as they are; the rest
is split into ``width`` byte planes (all first bytes, then all second bytes,
...) before zstd. Float deltas have a noisy low byte and a predictable
sign/exponent byte, so grouping lets zstd see the predictable plane as one run.
The frame digest makes any flipped byte of the stored file fail loudly, even
one zstd would ignore; the payload's own sha256 (the blob's name) is checked
by the store on top. Decoding never trusts the frame's own content size: output is capped at the
recorded raw size, so a lying frame cannot balloon memory.
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
LEVEL = 3
_THREADS_MIN_BYTES = 8 << 20  # below this zstd's worker threads cost more than they win


class Codec(abc.ABC):
    """Turns a payload into stored bytes and back, losslessly."""

    name: str
    codec_id: int

    @abc.abstractmethod
    def transform(self, payload: bytes, *, skip: int, width: int) -> bytes:
        """Reversible rearrangement applied before compression."""

    @abc.abstractmethod
    def untransform(self, data: bytes, *, skip: int, width: int) -> bytes:
        """Inverse of :meth:`transform`."""

    def encode(self, payload: bytes, *, skip: int = 0, width: int = 1, level: int = LEVEL) -> bytes:
        threads = -1 if len(payload) >= _THREADS_MIN_BYTES else 0
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=True)
        body = cctx.compress(self.transform(payload, skip=skip, width=width))
        return _HEADER.pack(MAGIC, self.codec_id, width, 0, skip, len(payload), _digest(body)) + body

    def decode_body(self, body: bytes, *, raw_size: int, skip: int, width: int) -> bytes:
        data = _decompress_capped(body, raw_size)
        return self.untransform(data, skip=skip, width=width)


class ZstdCodec(Codec):
    """Plain zstd; the fallback for payloads that are not 2- or 4-byte floats."""

    name = "zstd"
    codec_id = 1

    def transform(self, payload: bytes, *, skip: int, width: int) -> bytes:
        return payload

    def untransform(self, data: bytes, *, skip: int, width: int) -> bytes:
        return data


class ByteGroupedZstdCodec(Codec):
    """zstd over byte planes of 16- or 32-bit floats (lossless)."""

    name = "zstd-bytegroup"
    codec_id = 2

    def transform(self, payload: bytes, *, skip: int, width: int) -> bytes:
        body = np.frombuffer(payload, dtype=np.uint8, offset=skip)
        planes = body.reshape(-1, width).T
        return payload[:skip] + planes.tobytes()

    def untransform(self, data: bytes, *, skip: int, width: int) -> bytes:
        body = np.frombuffer(data, dtype=np.uint8, offset=skip)
        return data[:skip] + body.reshape(width, -1).T.tobytes()


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
        width = 1
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
    if width > 1 and (raw_size - skip) % width:
        raise IntegrityCheckError("blob header width does not divide its size")
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

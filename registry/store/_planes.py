"""The byte planes of the ``zstd-bytegroup`` codecs: float words to planes and back.

A word of ``width`` bytes is split into ``width`` planes (plane k holds one byte
of every word), after a bit rotation that puts the 8 exponent bits of a
bf16/fp32 value into the top plane:

* v1 (``zstd-bytegroup``) rotates the whole word left by one bit: the sign
  goes to the lowest bit of the lowest plane;
* v2 (``zstd-bytegroup-v2``) rotates only the top 9 bits: the sign goes to the
  top bit of the second plane, beside the highest mantissa bits.

Everything works chunk by chunk in cache-sized pieces (``CHUNK_WORDS``): planes
are made into one reused chunk buffer (yielded, for streaming compression),
and words are rebuilt from whole planes range by range (callable in parallel).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

CHUNK_WORDS = 1 << 18  # 1 MiB of fp32 words: the shift buffers stay in cache


def join_v1(words: np.ndarray[Any, Any], planes: list[np.ndarray[Any, Any]], start: int, stop: int) -> None:
    # words[start:stop] = rotate_right_1(sum(plane_k << 8k)), one cache-sized chunk at a time.
    width = len(planes)
    tmp = np.empty(min(stop - start, CHUNK_WORDS), dtype=words.dtype)
    top = 8 * width - 1
    for s in range(start, stop, CHUNK_WORDS):
        e = min(stop, s + CHUNK_WORDS)
        w, t = words[s:e], tmp[: e - s]
        np.copyto(w, planes[0][s:e])
        for k in range(1, width):
            np.left_shift(planes[k][s:e], 8 * k, out=t, dtype=words.dtype)
            w |= t
        np.right_shift(w, 1, out=t)
        w <<= top
        w |= t


def plane_v1(words: np.ndarray[Any, Any], k: int, width: int) -> Iterator[np.ndarray[Any, Any]]:
    # Byte k of the rotated word is (w >> (8k - 1)) & 0xff for k > 0 and
    # ((w << 1) | (w >> top)) & 0xff for k = 0: one shift into a small reused
    # buffer and one narrowing copy, chunk by chunk (the chunk stays in cache).
    # Yields views of one reused buffer.
    out = np.empty(min(words.size, CHUNK_WORDS), dtype=np.uint8)
    tmp = np.empty(out.size, dtype=words.dtype)
    top = 8 * width - 1
    for s in range(0, words.size, CHUNK_WORDS):
        w = words[s : s + CHUNK_WORDS]
        t, p = tmp[: w.size], out[: w.size]
        if k:
            np.right_shift(w, 8 * k - 1, out=t)
        else:
            np.left_shift(w, 1, out=t)
            t |= w >> top
        np.copyto(p, t, casting="unsafe")
        yield p


def plane_v2(words: np.ndarray[Any, Any], k: int, width: int) -> Iterator[np.ndarray[Any, Any]]:
    # Plane k of the v2 layout: the top plane is the exponent, (w >> (bits - 9));
    # the next one is the word's byte with its top bit (the exponent's lowest)
    # replaced by the sign; the others are the word's own bytes. Yields views of
    # one reused buffer, chunk by chunk.
    out = np.empty(min(words.size, CHUNK_WORDS), dtype=np.uint8)
    tmp = np.empty(out.size, dtype=words.dtype)
    sign = np.empty(out.size if k == width - 2 else 0, dtype=np.uint8)
    bits = 8 * width
    for s in range(0, words.size, CHUNK_WORDS):
        w = words[s : s + CHUNK_WORDS]
        t, p = tmp[: w.size], out[: w.size]
        np.right_shift(w, bits - 9 if k == width - 1 else 8 * k, out=t)
        np.copyto(p, t, casting="unsafe")
        if k == width - 2:
            g = sign[: w.size]
            np.right_shift(w, bits - 8, out=t)
            np.copyto(g, t, casting="unsafe")
            g &= 0x80
            p &= 0x7F
            p |= g
        yield p


def join_v2(words: np.ndarray[Any, Any], planes: list[np.ndarray[Any, Any]], start: int, stop: int) -> None:
    # words[start:stop] from v2 planes: the plain sum of plane_k << 8k has the
    # exponent one bit too high and the sign at bit (bits - 9); rotate those 9 bits back.
    width = len(planes)
    bits = 8 * width
    tmp = np.empty((2, min(stop - start, CHUNK_WORDS)), dtype=words.dtype)
    low = words.dtype.type((1 << (bits - 9)) - 1)
    for s in range(start, stop, CHUNK_WORDS):
        e = min(stop, s + CHUNK_WORDS)
        w, t, u = words[s:e], tmp[0, : e - s], tmp[1, : e - s]
        np.copyto(w, planes[0][s:e])
        for k in range(1, width):
            np.left_shift(planes[k][s:e], 8 * k, out=t, dtype=words.dtype)
            w |= t
        np.right_shift(w, bits - 9, out=t)  # exponent and sign: the top 9 bits, sign lowest
        w &= low
        np.bitwise_and(t, 1, out=u)
        u <<= bits - 1
        w |= u
        t >>= 1
        t <<= bits - 9
        w |= t

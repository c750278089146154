"""Slice payloads built straight from two checkpoints' bytes: ``aligned − degraded``, streamed.

The payload of a slice is byte for byte what ``safetensors.torch.save`` writes
for its fp32 (or bf16) differences; it is made chunk by chunk from ``pread``
into reused buffers, with the slice's norm and, for checkpoints not yet in the
catalog, their content hashes fed from the same reads.
"""

from __future__ import annotations

import math
import os

import torch

from ..checkpoints.reader import DTYPE_SIZES, Checkpoint, ContentHasher, pread_exact, torch_dtype
from ..checkpoints.writer import header_bytes
from ..errors import InvalidInputError

_ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16"}
_EXACT_IN_FP32 = (torch.float32, torch.bfloat16, torch.float16)
_STREAMED = ("F32", "BF16", "F16")


class SliceBuilder:
    """Builds slice payloads: bytes identical to ``st_save`` of the differences, plus their norm.

    The differences are computed straight into a payload buffer, chunk by chunk
    from ``pread`` into small reused buffers, so the data crosses memory once
    and nothing large is allocated per tensor; two payload buffers alternate
    (one being stored while the next is built). The finiteness check rides on
    the sum of squares: it is finite exactly when every element is (or a huge
    finite value overflowed it, which the explicit check then clears).
    """

    _CHUNK = 1 << 18  # elements: the fp32 chunk and its float64 copy fit in L2 (1.5x faster than 1 M, measured)

    def __init__(self, a_ck: Checkpoint, d_ck: Checkpoint, encoding: str,
                 hashers: tuple[ContentHasher | None, ContentHasher | None] = (None, None)) -> None:  # fmt: skip
        self.a_ck, self.d_ck, self.encoding = a_ck, d_ck, encoding
        # Content hashes of checkpoints not yet in the catalog, fed from the same reads.
        self.ha, self.hd = hashers
        self.dtype = torch.bfloat16 if encoding == "bf16" else torch.float32
        self.esize = 2 if encoding == "bf16" else 4
        self.buffers: list[bytearray] = [bytearray(), bytearray()]
        self.turn = 0
        self.scratch = [bytearray(self._CHUNK * 8), bytearray(self._CHUNK * 8)]
        self.tmp = torch.empty(self._CHUNK, dtype=torch.float32)
        self.tmp64 = torch.empty(self._CHUNK, dtype=torch.float64)
        self.max_err = 0.0

    def build(self, members: list[str]) -> tuple[memoryview, float]:
        names = sorted(members)
        entries = [(n, self.dtype, self.a_ck.tensors[n].shape, self.a_ck.tensors[n].numel * self.esize) for n in names]
        head = header_bytes((name, _ST_DTYPE[dtype], shape, nbytes) for name, dtype, shape, nbytes in entries)
        size = len(head) + sum(e[3] for e in entries)
        self.turn ^= 1
        if len(self.buffers[self.turn]) < size:
            self.buffers[self.turn] = bytearray()  # free the old one before growing
            self.buffers[self.turn] = bytearray(size)
        buf = self.buffers[self.turn]
        buf[: len(head)] = head
        sumsq, off = 0.0, len(head)
        for name, _, _, nbytes in entries:
            count = nbytes // self.esize
            out = torch.frombuffer(buf, dtype=self.dtype, offset=off, count=count) if count else None
            off += nbytes
            if out is not None:
                sumsq += self._diff(name, out)
        return memoryview(buf)[:size], math.sqrt(sumsq)

    def _diff(self, name: str, out: torch.Tensor) -> float:
        ia, id_ = self.a_ck.tensors[name], self.d_ck.tensors[name]
        if self.encoding != "fp32" or ia.dtype != id_.dtype or ia.dtype not in _STREAMED:
            return self._diff_whole(name, out)
        dt, es = torch_dtype(ia.dtype), DTYPE_SIZES[ia.dtype]
        ha, hd = self.ha, self.hd
        if ha is not None:
            ha.begin(name)
        if hd is not None:
            hd.begin(name)
        fa, fd = os.open(self.a_ck.path / ia.file, os.O_RDONLY), os.open(self.d_ck.path / id_.file, os.O_RDONLY)
        sq = 0.0
        try:
            for s in range(0, out.numel(), self._CHUNK):
                n = min(self._CHUNK, out.numel() - s)
                a = pread_exact(fa, self.scratch[0], n * es, ia.start + s * es, self.a_ck, name)
                d = pread_exact(fd, self.scratch[1], n * es, id_.start + s * es, self.d_ck, name)
                if ha is not None:
                    ha.update(a)
                if hd is not None:
                    hd.update(d)
                v, tmp = out[s : s + n], self.tmp[:n]
                v.copy_(torch.frombuffer(a, dtype=dt, count=n))
                tmp.copy_(torch.frombuffer(d, dtype=dt, count=n))
                v.sub_(tmp)
                t64 = self.tmp64[:n]
                t64.copy_(v)  # sum of squares in float64: a BLAS dot, 2x faster than sum(dtype=float64)
                part = float(torch.dot(t64, t64))
                if not math.isfinite(part) and not bool(torch.isfinite(v).all()):
                    raise InvalidInputError(f"the difference for {name} has NaN or Inf values; check both checkpoints")
                sq += part
        finally:
            os.close(fa)
            os.close(fd)
        return sq

    def _diff_whole(self, name: str, out: torch.Tensor) -> float:
        # Other dtypes and the bf16 encoding: the plain tensor-at-a-time path.
        for h in (self.ha, self.hd):
            if h is not None:
                h.hash_from_file(name)
        v = out if self.encoding == "fp32" else torch.empty(out.shape, dtype=torch.float32)
        v.copy_(self.a_ck.get_tensor(name).reshape(-1))
        d = self.d_ck.get_tensor(name).reshape(-1)
        v.sub_(d if d.dtype in _EXACT_IN_FP32 else d.to(torch.float32))
        if self.encoding == "bf16":
            out.copy_(v)
            self.max_err = max(self.max_err, float((out.float() - v).abs().max()))
        stored = out.float() if self.encoding == "bf16" else out
        sq = float(stored.square().sum(dtype=torch.float64))
        if not math.isfinite(sq) and not bool(torch.isfinite(v).all()):
            raise InvalidInputError(f"the difference for {name} has NaN or Inf values; check both checkpoints")
        return sq

"""Safety vectors: how tensors are cut into slices, and the streaming extraction of their blobs.

A vector is ``v = θ_aligned − θ_degraded`` computed in fp32, split into one
slice per transformer block; each slice is one safetensors payload stored as
a content-addressed blob, so a patch fetches only the blocks it uses. The
vector's hash is the sha256 of its (label, blob hash) list. The catalog side
(registering, listing, loading) is :class:`registry.method.vectors.Vectors`.

Which tensors a vector carries (``scope``):

* ``blocks`` (default): the 2-D weights inside repeated blocks (attention and
  MLP projections). Norm gains and embeddings drift for reasons unrelated to
  safety and rescaling them is risky, so they are left out by default.
* ``blocks+norms``: every tensor inside repeated blocks.
* ``all``: also embeddings, final norm and ``lm_head`` (as one extra slice).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._faults import crashpoint
from .._threads import torch_threads
from ..checkpoints.family import layer_of
from ..checkpoints.reader import Checkpoint, ContentHasher, tensors_from_buffer
from ..errors import InvalidInputError
from ..store.base import Store

if TYPE_CHECKING:
    import torch

SCOPES = ("blocks", "blocks+norms", "all")
ENCODINGS = ("fp32", "bf16")
EXTRA_LABEL = "extra"
Progress = Callable[[int, int], None]
SlicePlan = list[tuple[int | None, str, list[str]]]  # (block index or None, label, tensor names)


def plan_slices(names: list[str], scope: str) -> SlicePlan:
    """Group tensor names into slices: (block index or None, label, names)."""
    if scope not in SCOPES:
        raise InvalidInputError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    blocks: dict[int, list[str]] = {}
    extra: list[str] = []
    for name in names:
        hit = layer_of(name)
        if hit is not None:
            blocks.setdefault(hit[0], []).append(name)
        elif scope == "all":
            extra.append(name)
    out: SlicePlan = []
    for idx in sorted(blocks):
        members = sorted(blocks[idx])
        prefix = members[0][: members[0].index(f".{idx}.")]
        out.append((idx, f"{prefix}.{idx}", members))
    if extra:
        out.append((None, EXTRA_LABEL, sorted(extra)))
    return out


def scope_names(ckpt: Checkpoint, scope: str) -> list[str]:
    """The tensor names of ``ckpt`` a vector of this ``scope`` carries (see the module docstring)."""
    if scope == "blocks":
        return [n for n in ckpt.names() if layer_of(n) and len(ckpt.tensors[n].shape) >= 2]
    return ckpt.names()


_scope_filter = scope_names  # the name benchmarks/ import


def name_order(slices: SlicePlan) -> list[int] | None:
    """Slice positions in the order that reads tensors in name order, or None when their names interleave."""
    order = sorted(range(len(slices)), key=lambda i: slices[i][2][0])
    for prev, nxt in itertools.pairwise(order):
        if slices[prev][2][-1] >= slices[nxt][2][0]:
            return None
    return order


def vector_hash(slices: Sequence[Sequence[str]]) -> str:
    """The vector hash of its ``(label, blob sha256)`` list."""
    canon = json.dumps([list(s) for s in slices], separators=(",", ":"))
    return hashlib.sha256(b"safegene-vector-v1\n" + canon.encode()).hexdigest()


def payload_skip(payload: bytes | memoryview) -> int:
    """Bytes of a slice payload's safetensors header (left out of byte grouping)."""
    return 8 + int.from_bytes(payload[:8], "little")


def decode_slice(payload: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """A slice payload's tensors (validated header; a writable payload is shared, not copied)."""
    return tensors_from_buffer(payload, "vector slice")


def extract_slices(store: Store, a_ck: Checkpoint, d_ck: Checkpoint, slices: SlicePlan, encoding: str,
                   progress: Progress | None, *, order: list[int],
                   hashers: tuple[ContentHasher | None, ContentHasher | None] = (None, None),
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Compute every slice's ``aligned − degraded`` payload and write it to ``store``.

    Args:
        store: where the blobs go (the caller holds :meth:`Store.writing`
            until the catalog references them).
        a_ck, d_ck: the aligned and degraded checkpoints (same manifest).
        slices: the plan (:func:`plan_slices`).
        encoding: ``fp32`` or ``bf16``.
        progress: ``(done, total)`` over slices.
        order: the order to build slices in (tensor-name order feeds ``hashers``).
        hashers: content hashers of checkpoints not yet in the catalog, fed from the same reads.

    Returns:
        One dict per slice (position, index, label, names, blob info, norm), in
        position order, and the vector's meta (shapes, bf16 max abs error).
    """
    # Three stages: this thread computes a slice's differences (and feeds the
    # checkpoints' content hashes), encoders hash and compress slices
    # (store.encode; hashlib, numpy and zstd release the GIL), and a writer writes
    # and fsyncs them in slice order (I/O wait overlaps the work). Two payload
    # buffers alternate: a slice is built once the slice two before it is encoded.
    # Two encoders, so that a slice's encoding starts as soon as it is built,
    # while the previous one's last plane is still being compressed (one encoder
    # left a core idle at the end of every slice). The crashpoint fires as each
    # write is collected. Nothing is in the catalog until every blob is on disk.
    from ._slice_builder import SliceBuilder  # imports torch

    layers: list[dict[str, Any]] = []
    shapes: dict[str, list[int]] = {}
    builder = SliceBuilder(a_ck, d_ck, encoding, hashers)
    width = 2 if encoding == "bf16" else 4
    Pending = tuple[int, int | None, str, list[str], float, Future[Any]]

    def written(pending: Pending) -> None:
        pos, idx, label, members, norm, fut = pending
        layers.append({"position": pos, "index": idx, "label": label, "names": members,
                       "blob": fut.result(), "norm": norm})  # fmt: skip
        crashpoint("extract.slice-stored")
        if progress:
            progress(len(layers), len(slices))

    def write(encoded: Future[Any]) -> Any:
        return store.write(encoded.result())

    # Intra-op threads only cost here: the chunks are cache-sized, and on a busy
    # machine torch's thread hand-offs made the arithmetic 10-25x slower (measured).
    with (
        torch_threads(1),
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="safegene-encode") as encoder,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="safegene-write") as writer,
    ):
        encodes: list[Future[Any]] = []  # in flight, oldest first: one per payload buffer
        writes: list[Pending] = []
        ha, hd = hashers
        if ha is not None and hd is not None:
            # The tensors named before the first slice's (embeddings, lm_head) are
            # hashed first; both checkpoints' at once, while the encoders are idle.
            first = min(slices[order[0]][2])
            ahead = encoder.submit(hd.hash_before, first)
            ha.hash_before(first)
            ahead.result()
        for pos in order:
            idx, label, members = slices[pos]
            if len(encodes) == 2:
                encodes.pop(0).result()  # the buffer build() is about to reuse
            payload, norm = builder.build(members)
            shapes.update({n: list(a_ck.tensors[n].shape) for n in members})
            encodes.append(encoder.submit(store.encode, payload, skip=payload_skip(payload), width=width))
            writes.append((pos, idx, label, members, norm, writer.submit(write, encodes[-1])))
            while len(writes) > 2 or (writes and writes[0][-1].done()):
                written(writes.pop(0))
            del payload
        for pending in writes:
            written(pending)
    layers.sort(key=lambda lay: lay["position"])
    return layers, {"shapes": shapes, "max_abs_error": builder.max_err}

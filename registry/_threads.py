"""Torch intra-op thread count, set for a block of work and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave as is).

    Streaming one tensor at a time is memory-bound; on a busy 2-core machine
    torch's intra-op hand-offs made that arithmetic several times slower
    (benchmarks/scale.py), and tiny-model training likewise (toy builds).
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

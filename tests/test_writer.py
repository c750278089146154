"""The one safetensors header writer: byte for byte what safetensors writes; metadata set in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from registry.checkpoints.writer import header_bytes, rewrite_metadata
from registry.errors import InvalidInputError

_CODE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 5, generator=g), "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "c": torch.randn(2, 2, 2, generator=g).to(torch.float16)}


def _entries(ts: dict[str, torch.Tensor]) -> list[tuple[str, str, tuple[int, ...], int]]:
    return [(n, _CODE[t.dtype], tuple(t.shape), t.numel() * t.element_size()) for n, t in sorted(ts.items())]


def test_header_is_what_safetensors_writes() -> None:
    ts = _tensors()
    data = b"".join(ts[n].contiguous().view(torch.uint8).numpy().tobytes() for n in sorted(ts))
    assert header_bytes(_entries(ts)) + data == save(ts)


def test_header_with_metadata_reads_back_with_safetensors(tmp_path: Path) -> None:
    # safetensors orders __metadata__ keys by its own hash map, so bytes are compared without metadata only
    ts = _tensors()
    data = b"".join(ts[n].contiguous().view(torch.uint8).numpy().tobytes() for n in sorted(ts))
    meta = {"format": "pt", "safegene.vector": "ab" * 32}
    f = tmp_path / "m.safetensors"
    f.write_bytes(header_bytes(_entries(ts), meta) + data)
    assert len(f.read_bytes()[8:8 + int.from_bytes(f.read_bytes()[:8], "little")]) % 8 == 0
    with safe_open(str(f), "pt") as fh:
        assert fh.metadata() == meta
        for name, t in ts.items():
            assert torch.equal(fh.get_tensor(name), t)


def test_rewrite_metadata_keeps_every_data_byte(tmp_path: Path) -> None:
    ts = _tensors()
    data = b"".join(ts[n].contiguous().view(torch.uint8).numpy().tobytes() for n in sorted(ts))
    f = tmp_path / "x.safetensors"
    f.write_bytes(header_bytes(_entries(ts), {"format": "pt", "hash": "0" * 64}) + data)
    rewrite_metadata(f, {"hash": "f" * 64})
    raw = f.read_bytes()
    assert raw.endswith(data) and len(raw) == len(header_bytes(_entries(ts), {"format": "pt", "hash": "0" * 64})) + len(data)
    with safe_open(str(f), "pt") as fh:
        assert fh.metadata() == {"format": "pt", "hash": "f" * 64}
        assert torch.equal(fh.get_tensor("a.weight"), ts["a.weight"])
    with pytest.raises(InvalidInputError, match="reserved"):
        rewrite_metadata(f, {"hash": "f" * 200})
    assert f.read_bytes() == raw  # a value that does not fit changes nothing


@pytest.mark.parametrize("encoding", ["fp32", "bf16"])
def test_slice_payloads_are_what_safetensors_writes(tiny_models: dict[str, Path], encoding: str) -> None:
    """An extracted slice is byte for byte ``safetensors.torch.save`` of its differences (its content address)."""
    from registry.checkpoints.reader import Checkpoint
    from registry.method._slice_builder import SliceBuilder

    a, d = Checkpoint(tiny_models["llama"]), Checkpoint(tiny_models["llama_b"])
    names = [n for n in a.names() if ".layers.0." in n and n.endswith("proj.weight")]
    payload, _ = SliceBuilder(a, d, encoding).build(names)
    dtype = torch.bfloat16 if encoding == "bf16" else torch.float32
    expected = {n: (a.get_tensor(n).float() - d.get_tensor(n).float()).to(dtype) for n in names}
    assert bytes(payload) == save(expected)

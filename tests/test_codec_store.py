"""Codec round-trips are bit-exact; the store catches every corruption on read."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from registry.errors import IntegrityCheckError
from registry.store import codec
from registry.store.blobs import BlobStore

DTYPES = {"fp32": (torch.float32, torch.int32, 4), "fp16": (torch.float16, torch.int16, 2),
          "bf16": (torch.bfloat16, torch.int16, 2)}


def _payload_from_bits(bits: list[int], dtype_name: str) -> bytes:
    dtype, int_dtype, _ = DTYPES[dtype_name]
    raw = torch.tensor(bits, dtype=torch.int64).to(int_dtype).view(dtype)
    return save({"t": raw})


@settings(max_examples=60, deadline=None)
@given(
    dtype_name=st.sampled_from(sorted(DTYPES)),
    bits=st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), min_size=1, max_size=300),
)
def test_round_trip_is_bit_exact(dtype_name: str, bits: list[int]) -> None:
    payload = _payload_from_bits(bits, dtype_name)
    skip = 8 + int.from_bytes(payload[:8], "little")
    name, stored = codec.encode(payload, skip=skip, width=DTYPES[dtype_name][2])
    assert name == "zstd-bytegroup-v2"
    assert codec.decode(stored) == payload
    # blobs of the first layout (written by earlier releases) still read
    _, old = codec.encode(payload, skip=skip, width=DTYPES[dtype_name][2], codec="zstd-bytegroup")
    assert old[4] == 2 and codec.decode(old) == payload


@pytest.mark.parametrize("width", [2, 4])
def test_v2_planes_put_the_exponent_on_top_and_the_sign_beside_the_mantissa(width: int) -> None:
    dtype, int_dtype = (torch.float32, torch.int32) if width == 4 else (torch.bfloat16, torch.int16)
    t = torch.tensor([-1.5, 2.0, -0.0], dtype=dtype)
    payload = t.view(int_dtype).numpy().tobytes()
    c = codec.CODECS["zstd-bytegroup-v2"]
    top, second, *_ = c.split(payload, skip=0, width=width)[1:]
    assert list(top) == [127, 128, 0]  # biased exponents of 1.5, 2, 0
    assert [b >> 7 for b in second] == [1, 0, 1]  # the signs
    assert [b & 0x7F for b in second] == [0x40, 0, 0]  # 1.5's top mantissa bit


def test_v2_stores_a_delta_of_bf16_checkpoints_smaller_than_v1() -> None:
    """Such a delta has no low mantissa bits: v1 put the random signs among those zeros."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(512, 512, generator=g).to(torch.bfloat16)
    tuned = (w.float() + torch.randn(512, 512, generator=g) * 0.02).to(torch.bfloat16)
    payload = save({"d": tuned.float() - w.float()})
    skip = 8 + int.from_bytes(payload[:8], "little")
    sizes = {n: len(codec.encode(payload, skip=skip, width=4, codec=n)[1]) for n in ("zstd-bytegroup", "zstd-bytegroup-v2")}
    assert sizes["zstd-bytegroup-v2"] < 0.95 * sizes["zstd-bytegroup"], sizes


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_special_values_survive(dtype_name: str) -> None:
    dtype, int_dtype, width = DTYPES[dtype_name]
    t = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-8], dtype=torch.float32)
    t = t.to(dtype)
    # a NaN with a non-default payload
    bits = t.view(int_dtype).clone()
    bits[4] = bits[4] | 1
    payload = save({"t": bits.view(dtype)})
    skip = 8 + int.from_bytes(payload[:8], "little")
    _, stored = codec.encode(payload, skip=skip, width=width)
    assert codec.decode(stored) == payload


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=0, max_size=2000))
def test_plain_zstd_round_trip(data: bytes) -> None:
    name, stored = codec.encode(data, width=1)
    assert name == "zstd"
    assert codec.decode(stored) == data


def _store_one(tmp_path: Path) -> tuple[BlobStore, str, bytes]:
    store = BlobStore(tmp_path / "store")
    payload = save({"w": torch.randn(64, 16)})
    info = store.put(payload, skip=8 + int.from_bytes(payload[:8], "little"), width=4)
    return store, info.sha256, payload


def test_store_put_get_idempotent(tmp_path: Path) -> None:
    store, sha, payload = _store_one(tmp_path)
    assert store.get(sha) == payload
    again = store.put(payload, skip=8 + int.from_bytes(payload[:8], "little"), width=4)
    assert again.sha256 == sha and again.codec == "zstd-bytegroup-v2"
    assert list(store.iter_shas()) == [sha]
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    store, sha, _ = _store_one(tmp_path)
    path = store.path_for(sha)
    original = path.read_bytes()
    scratch = codec.Scratch()
    for pos in range(len(original)):
        flipped = bytearray(original)
        flipped[pos] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(IntegrityCheckError):
            store.get(sha)
        with pytest.raises(IntegrityCheckError):
            store.get(sha, scratch=scratch)
    path.write_bytes(original)
    assert store.get(sha) == store.get(sha, scratch=scratch)


def test_a_scratch_is_reused_blob_after_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    g = torch.Generator().manual_seed(3)
    payloads = [save({"w": torch.randn(n, 64, generator=g)}) for n in (300, 200, 300)]
    shas = [store.put(p, skip=payload_skip_of(p), width=4).sha256 for p in payloads]
    scratch = codec.Scratch()
    first = store.get(shas[0], scratch=scratch)
    assert bytes(first) == payloads[0]
    for sha, payload in zip(shas[1:], payloads[1:], strict=True):
        assert bytes(store.get(sha, scratch=scratch)) == payload
    # the result views the scratch: the first blob's bytes were overwritten by the last one's
    assert bytes(first) == payloads[2]


def _grouped_blob(frames: list[bytes], raw_size: int) -> bytes:
    body = b"".join(struct.pack("<Q", len(f)) + f for f in frames)
    digest = hashlib.sha256(body).digest()[:16]
    return struct.pack("<4sBBHIQ16s", codec.MAGIC, 3, 4, codec.FLAG_SHA256, 0, raw_size, digest) + body


@pytest.mark.parametrize("lie", ["unsized", "states-its-share"])
def test_a_plane_frame_yielding_more_than_its_share_is_refused(lie: str) -> None:
    """With a scratch, planes decompress straight into it: a frame cannot write past its share."""
    raw_size, share = 400, 100
    big = zstandard.ZstdCompressor(write_content_size=lie != "unsized").compress(b"\1" * (4 << 20))
    if lie == "states-its-share":  # rewrite the frame header's 4-byte content size to the share
        fhd = big[4]
        assert fhd >> 6 == 2 and not fhd & 3
        at = 5 + (0 if fhd & 0x20 else 1)
        big = big[:at] + struct.pack("<I", share) + big[at + 4 :]
        assert zstandard.get_frame_parameters(big).content_size == share
    frames = [zstandard.ZstdCompressor().compress(b""), big] + [zstandard.ZstdCompressor().compress(b"\0" * share)] * 3
    scratch = codec.Scratch()
    with pytest.raises(IntegrityCheckError, match="decompress"):
        codec.decode(_grouped_blob(frames, raw_size), scratch=scratch)
    assert all(b.size <= raw_size for b in scratch._bufs.values())  # nothing larger was ever allocated


def test_a_codec_this_version_does_not_know_says_upgrade(tmp_path: Path) -> None:
    name, stored = codec.encode(b"x" * 1000)
    future = bytearray(stored)
    future[4] = 200  # the codec id byte, after the 4-byte magic
    with pytest.raises(IntegrityCheckError, match="codec id 200, which this version of safegene cannot read"):
        codec.decode(bytes(future))
    future[:4] = b"NOPE"
    with pytest.raises(IntegrityCheckError, match="not a SafeGene blob header"):
        codec.decode(bytes(future))


def test_missing_blob_is_reported(tmp_path: Path) -> None:
    store, sha, _ = _store_one(tmp_path)
    store.path_for(sha).unlink()
    with pytest.raises(IntegrityCheckError, match="missing"):
        store.get(sha)


def test_lying_frame_size_is_refused() -> None:
    """A decompression bomb: the header claims few bytes, the frame holds many."""
    def blob(raw_size: int, frame: bytes) -> bytes:
        body = struct.pack("<Q", len(frame)) + frame
        digest = hashlib.blake2b(body, digest_size=16).digest()
        return struct.pack("<4sBBHIQ16s", codec.MAGIC, 1, 1, 0, 0, raw_size, digest) + body

    big = zstandard.ZstdCompressor().compress(b"\0" * (50 << 20))
    with pytest.raises(IntegrityCheckError, match="claims"):
        codec.decode(blob(100, big))
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (50 << 20))
    with pytest.raises(IntegrityCheckError, match="decompressed to"):
        codec.decode(blob(100, no_size))
    with pytest.raises(IntegrityCheckError, match="more than"):
        codec.decode(blob(1 << 40, big), max_size=1 << 30)
    # a header size of 2**64 - 1 is zstd's "unknown": refused as a header, without a size cap
    with pytest.raises(IntegrityCheckError, match="not a SafeGene blob header"):
        codec.decode(blob(2**64 - 1, no_size))


def test_bytegroup_beats_plain_zstd_on_a_smooth_delta() -> None:
    """Sanity only; the real figure is measured by benchmarks/codec_ratio.py."""
    g = torch.Generator().manual_seed(0)
    delta = (torch.randn(256, 256, generator=g) * 1e-3).to(torch.bfloat16)
    payload = save({"d": delta})
    skip = 8 + int.from_bytes(payload[:8], "little")
    _, grouped = codec.encode(payload, skip=skip, width=2)
    _, plain = codec.encode(payload, codec="zstd")
    assert len(grouped) < len(plain)
    assert np.frombuffer(codec.decode(grouped), dtype=np.uint8).tobytes() == payload


@pytest.mark.parametrize("lead", [0, 3])
def test_large_payloads_round_trip_through_the_threaded_paths(lead: int) -> None:
    """≥ 8 MiB: planes compressed concurrently, body digest beside decompression, words rebuilt in ranges."""
    g = torch.Generator().manual_seed(1)
    body = (torch.randn(3_000_001, generator=g) * 1e-3).numpy().tobytes()
    payload = b"h" * lead + body  # lead 3: the words start unaligned
    name, stored = codec.encode(payload, skip=lead, width=4)
    assert name == "zstd-bytegroup-v2" and len(stored) < len(payload)
    assert codec.encode(payload, skip=lead, width=4)[1] == stored  # planes compressed side by side: same bytes
    back = codec.decode(stored)
    assert bytes(back) == payload
    assert bytes(codec.decode(codec.encode(payload, skip=lead, width=4, codec="zstd-bytegroup")[1])) == payload
    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(IntegrityCheckError):
        codec.decode(bytes(flipped))


def test_planes_use_zstd_workers_when_cores_outnumber_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A many-core machine gives each plane's frame zstd workers too: the bytes still decode exactly."""
    g = torch.Generator().manual_seed(2)
    payload = (torch.randn(3_000_000, generator=g) * 1e-3).numpy().tobytes()
    _, single = codec.encode(payload, skip=0, width=4)
    monkeypatch.setattr(codec, "_CORES", 16)
    assert codec._plane_threads(4) == 4 and codec._plane_threads(1) == 0
    _, threaded = codec.encode(payload, skip=0, width=4)
    assert threaded != single  # zstd's jobs frame the planes differently: the workers did run
    assert bytes(codec.decode(threaded)) == payload == bytes(codec.decode(single))


def _frames(stored: bytes) -> list[bytes]:
    pos, out = struct.calcsize("<4sBBHIQ16s"), []
    while pos < len(stored):
        (n,) = struct.unpack_from("<Q", stored, pos)
        out.append(stored[pos + 8 : pos + 8 + n])
        pos += 8 + n
    return out


def test_the_exponent_plane_is_an_ordinary_sized_zstd_frame_with_huffman_literals(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The top plane goes through zstd's C API (cffi) with literals always Huffman-coded: smaller than
    the C backend's frame for it, still a plain zstd frame stating its size; without cffi, the old path."""
    from registry.store import _zstd_literals

    assert _zstd_literals.AVAILABLE, "zstandard's cffi backend is missing: pip install cffi"
    g = torch.Generator().manual_seed(3)
    # 10 MB: above the threshold where planes are compressed side by side, in threads
    payload = save({"d": (torch.randn(2_500_000, generator=g) * 1e-3).to(torch.bfloat16).float()})
    skip = payload_skip_of(payload)
    _, stored = codec.encode(payload, skip=skip, width=4)
    monkeypatch.setattr(_zstd_literals, "AVAILABLE", False)
    _, fallback = codec.encode(payload, skip=skip, width=4)
    new, old = _frames(stored), _frames(fallback)
    assert new[0] == old[0] and new[2:] == old[2:]  # only the exponent plane's frame differs
    assert len(new[1]) < len(old[1])
    plane = zstandard.ZstdDecompressor().decompress(new[1])
    assert zstandard.get_frame_parameters(new[1]).content_size == len(plane) == (len(payload) - skip) // 4
    assert plane == zstandard.ZstdDecompressor().decompress(old[1])
    assert bytes(codec.decode(stored)) == payload == bytes(codec.decode(fallback))


_SWITCH = """
import sys, torch
from safetensors.torch import save
from registry.store import _zstd_literals, codec
g = torch.Generator().manual_seed(5)
payload = save({"d": torch.randn(300_000, generator=g) * 1e-3})
skip = 8 + int.from_bytes(payload[:8], "little")
_, stored = codec.encode(payload, skip=skip, width=4)
assert bytes(codec.decode(stored)) == payload
sys.stdout.buffer.write(bytes([_zstd_literals.AVAILABLE]) + bytes(stored))
"""


def test_the_literals_switch_selects_the_fallback_and_either_reads_the_other() -> None:
    """SAFEGENE_ZSTD_LITERALS=0 turns the C-API path off (the fallback); blobs written either way
    decode in a process of the other kind."""
    runs = {}
    for flag in ("1", "0"):
        env = {**os.environ, "SAFEGENE_ZSTD_LITERALS": flag}
        out = subprocess.run([sys.executable, "-c", _SWITCH], env=env, capture_output=True, check=True).stdout
        runs[flag] = (bool(out[0]), out[1:])
    assert runs["1"][0] is True and runs["0"][0] is False
    assert runs["1"][1] != runs["0"][1]  # the exponent plane's frame differs
    assert bytes(codec.decode(runs["0"][1])) == bytes(codec.decode(runs["1"][1]))


def test_the_literals_compressor_holds_to_its_pledged_size() -> None:
    from registry.store import _zstd_literals

    obj = _zstd_literals.LiteralsCompressor(10, _zstd_literals.exponent_params())
    obj.compress(b"x" * 6)
    with pytest.raises(zstandard.ZstdError, match="zstd: "):
        obj.flush()
    obj = _zstd_literals.LiteralsCompressor(3, _zstd_literals.exponent_params())
    frame = obj.compress(b"abc") + obj.flush()
    assert zstandard.ZstdDecompressor().decompress(frame) == b"abc"
    with pytest.raises(zstandard.ZstdError, match="has ended"):
        obj.flush()  # not a second, empty frame
    obj = _zstd_literals.LiteralsCompressor(3 << 20, _zstd_literals.exponent_params(threads=2))
    data = bytes(range(256)) * (3 << 12)
    frame = b"".join([obj.compress(data[: 1 << 20]), obj.compress(data[1 << 20 :]), obj.flush()])
    assert zstandard.ZstdDecompressor().decompress(frame) == data


def test_slice_buffers_decode_like_safetensors_and_share_writable_memory() -> None:
    from safetensors.torch import load

    from registry.checkpoints.reader import tensors_from_buffer
    from registry.errors import InvalidCheckpointError

    tensors = {"b.w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "a.w": torch.ones(5, dtype=torch.bfloat16),
               "z.empty": torch.empty(0, 3)}  # fmt: skip
    payload = save(tensors)
    ref = load(payload)
    from_bytes = tensors_from_buffer(payload, "test")
    assert sorted(from_bytes) == sorted(ref)
    for n, t in ref.items():
        assert torch.equal(from_bytes[n], t) and from_bytes[n].dtype == t.dtype
    from_bytes["b.w"].add_(1)  # bytes are copied: writable tensors, payload untouched
    assert load(payload)["b.w"][0, 0] == 0
    buf = bytearray(payload)
    shared = tensors_from_buffer(memoryview(buf), "test")
    shared["b.w"][0, 0] = 42.0
    assert load(bytes(buf))["b.w"][0, 0] == 42.0  # a writable buffer is shared, not copied
    bad_len = (len(payload) * 2).to_bytes(8, "little") + payload[8:]
    with pytest.raises(InvalidCheckpointError, match="runs past"):
        tensors_from_buffer(bad_len, "test")
    with pytest.raises(InvalidCheckpointError, match="past the end"):
        tensors_from_buffer(payload[:-4], "test")


def test_blobs_with_the_earlier_blake2b_digest_still_decode() -> None:
    payload = _payload_from_bits(list(range(-500, 500)), "fp32")
    _, stored = codec.encode(payload, skip=payload_skip_of(payload), width=4)
    magic, cid, width, flags, skip, raw, digest = struct.unpack_from("<4sBBHIQ16s", stored)
    body = stored[struct.calcsize("<4sBBHIQ16s") :]
    assert flags == codec.FLAG_SHA256 and digest == hashlib.sha256(body).digest()[:16]
    old = struct.pack("<4sBBHIQ16s", magic, cid, width, 0, skip, raw, hashlib.blake2b(body, digest_size=16).digest())
    assert bytes(codec.decode(old + body)) == payload
    with pytest.raises(IntegrityCheckError, match="does not match its recorded digest"):
        codec.decode(old[:-16] + digest + body)  # a sha256 digest under the blake2b flag
    unknown = struct.pack("<4sBBHIQ16s", magic, cid, width, 2 | codec.FLAG_SHA256, skip, raw, digest)
    with pytest.raises(IntegrityCheckError, match="not a SafeGene blob header"):
        codec.decode(unknown + body)


def payload_skip_of(payload: bytes) -> int:
    return 8 + int.from_bytes(payload[:8], "little")

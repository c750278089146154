"""Byte-grouped zstd vs plain zstd on real fine-tune deltas (issue: foundation).

The deltas are differences of toy checkpoints where one was trained a few
hundred steps from the other (base → aligned: 250 steps; aligned → task: 300
steps; aligned → degraded: 120 steps), stored per transformer block as the
registry stores vector slices, in bf16 and fp32, both codecs at zstd level 3.

    python benchmarks/codec_ratio.py [--world DIR] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results  # noqa: E402

from registry.checkpoints.reader import Checkpoint  # noqa: E402
from registry.method.extract import payload_skip, plan_slices  # noqa: E402
from registry.store import codec  # noqa: E402
from registry.toy import build_world, load_world  # noqa: E402


def measure(a: Checkpoint, b: Checkpoint, dtype: torch.dtype) -> dict[str, float]:
    width = 2 if dtype == torch.bfloat16 else 4
    raw = grouped = grouped3 = plain = 0
    t_enc = t_dec = 0.0
    for _, _, names in plan_slices([n for n in a.names() if len(a.tensors[n].shape) == 2], "blocks"):
        tensors = {n: (b.get_tensor(n).float() - a.get_tensor(n).float()).to(dtype).contiguous() for n in names}
        payload = save(tensors)
        t0 = time.perf_counter()
        _, g = codec.encode(payload, skip=payload_skip(payload), width=width)
        t1 = time.perf_counter()
        back = codec.decode(g)
        t_dec += time.perf_counter() - t1
        assert bytes(back) == payload  # outside the timing: comparing a memoryview is slow
        t_enc += t1 - t0
        _, p = codec.encode(payload, codec="zstd")
        g3 = codec.CODECS["zstd-bytegroup-v2"].encode(payload, skip=payload_skip(payload), width=width, level=codec.LEVEL)
        raw, grouped, plain = raw + len(payload), grouped + len(g), plain + len(p)
        grouped3 += len(g3)
    return {"raw": raw, "bytegroup": grouped, "bytegroup_l3": grouped3, "plain": plain,
            "saving": 1 - grouped / plain, "saving_same_level": 1 - grouped3 / plain,
            "enc_mb_s": raw / t_enc / 1e6, "dec_mb_s": raw / t_dec / 1e6}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", type=Path, help="A built toy world (default: build one).")
    ap.add_argument("--family", default="llama")
    ap.add_argument("--quick", action="store_true", help="Build the small CI world instead.")
    args = ap.parse_args()
    world = load_world(args.world) if args.world else build_world(
        args.family, Path(tempfile.mkdtemp()) / "world", quick=args.quick)
    pairs = [("base", "aligned")] + [("aligned", t) for t in world.models if t.startswith("task-")] + [("aligned", "degraded")]
    rows, data = [], []
    for src, dst in pairs:
        a, b = Checkpoint(world.models[src]), Checkpoint(world.models[dst])
        for dtype in (torch.bfloat16, torch.float32):
            r = measure(a, b, dtype)
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            data.append({"pair": f"{src}->{dst}", "dtype": name, **r})
            rows.append([f"{src} → {dst}", name, f"{r['raw']:,}", f"{r['plain']:,}", f"{r['bytegroup_l3']:,}",
                         f"{100 * r['saving_same_level']:.1f}%", f"{r['bytegroup']:,}", f"{100 * r['saving']:.1f}%",
                         f"{r['enc_mb_s']:.0f}", f"{r['dec_mb_s']:.0f}"])  # fmt: skip
    bf16 = [d["saving_same_level"] for d in data if d["dtype"] == "bf16"]
    md = (f"# Codec: byte-grouped zstd vs plain zstd (level 3)\n\nToy world `{world.family}` "
          f"(quick={world.quick}); deltas stored per block as the registry stores vector slices.\n\n"
          + md_table(["delta", "dtype", "raw bytes", "plain zstd-3", "byte-grouped zstd-3", "saving (same level)",
                     "byte-grouped default (fast planes)", "saving (default)", "enc MB/s", "dec MB/s"], rows)
          + f"\n\nbf16 saving at the same level (3): min {100 * min(bf16):.1f}%, mean {100 * sum(bf16) / len(bf16):.1f}% (target ≥ 10%).\n")
    print(md)
    write_results("codec", {"world": str(world.root), "rows": data}, md)


if __name__ == "__main__":
    main()

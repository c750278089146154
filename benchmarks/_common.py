"""Helpers shared by the benchmark scripts (results files, machine description)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def best_round_trips(files: list[dict[str, Any]], repeats: int,
                     round_trip: Callable[[bytes, int], tuple[int, float, float]]) -> dict[str, Any]:  # fmt: skip
    """The codec comparison's one measuring loop (registry, zstd and ZipNN alike).

    ``round_trip(payload, skip)`` compresses and decompresses one slice payload,
    checks it, and returns (stored bytes, encode seconds, decode seconds), timing
    only the codec's own work. Totals over ``files``; the best of ``repeats`` passes.
    """
    raw = stored = 0
    enc = dec = float("inf")
    for _ in range(repeats):
        t_enc = t_dec = 0.0
        raw = stored = 0
        for f in files:
            payload = Path(f["path"]).read_bytes()
            n, e, d = round_trip(payload, f["skip"])
            raw, stored, t_enc, t_dec = raw + len(payload), stored + n, t_enc + e, t_dec + d
        enc, dec = min(enc, t_enc), min(dec, t_dec)
    return {"raw": raw, "stored": stored, "enc_s": enc, "dec_s": dec}


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def write_results(name: str, data: dict[str, Any], markdown: str, *, root: Path | None = None) -> Path:
    """Write results/<name>.json and results/<name>.md (the markdown gets a machine footer).

    ``root`` replaces benchmarks/results/ (e.g. a temp folder for a CI smoke run).
    """
    out = root or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    data = {**data, "machine": machine()}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    m = data["machine"]
    footer = f"\n_Measured {m['date']} on {m['cpus']} CPU(s), torch {m['torch']}, Python {m['python']}._\n"
    path = out / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n" + footer)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a benchmark starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)

"""Helpers shared by the benchmark scripts (results files, machine description)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)

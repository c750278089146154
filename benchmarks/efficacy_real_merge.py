"""Merge per-task runs of ``benchmarks/efficacy_real.py`` into one table (``efficacy-real.{md,json}``).

    python benchmarks/efficacy_real_merge.py RUN.json [RUN.json ...] [--results DIR]

The same as ``efficacy_real.py --merge``, except for the bag-of-words judge's
file hash: safetensors writes a file's metadata in hash-map order, so the same
judge (same training texts and seed, deterministic training, equal tensors)
can differ in bytes between two processes. Its other fields must still agree;
every file hash is kept in the merged ``judges.file_sha256`` (a list).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _efficacy_real_report import render_markdown  # noqa: E402
from efficacy_real import RESULTS, merge  # noqa: E402


def merge_runs(docs: list[dict]) -> dict:  # type: ignore[type-arg]
    shas = sorted({str(d.get("judges", {}).get("file_sha256")) for d in docs})
    return merge([{**d, "judges": {**d.get("judges", {}), "file_sha256": shas}} for d in docs])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    data = merge_runs([json.loads(p.read_text()) for p in args.runs])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "efficacy-real.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    md = render_markdown(data)
    (args.results / "efficacy-real.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

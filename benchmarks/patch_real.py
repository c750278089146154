"""`safegene patch --coefficients auto` on SmolLM2-135M-Instruct: wall time and peak memory, as a user runs it.

A fresh registry home gets the real world's aligned and degraded models and
the safety vector (extracted, not scored); then the CLI patches the arithmetic
task model with λ recalibrated on seed 0's 56-shot sample over every block
(what layer scoring selects on this world), default settings. Issue 18's
target: ≤ 5 minutes on 2 cores. Writes ``benchmarks/results/patch-real.{md,json}``.

    python benchmarks/patch_real.py [--world /work/cache/realworld]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, md_table  # noqa: E402
from _efficacy_real_report import sample_shots  # noqa: E402
from efficacy_real import git_state  # noqa: E402

from registry.evaluation.probes import load_probes, write_probes  # noqa: E402

TARGET_SECONDS = 300


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/work/cache/realworld"))
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    commit, dirty = git_state()
    sg = [str(Path(sys.executable).with_name("safegene"))]
    with tempfile.TemporaryDirectory(prefix="sg-patch-real-") as tmp:
        home = ["--home", f"{tmp}/home", "-q"]
        shots = Path(tmp) / "shots.jsonl"
        write_probes(shots, sample_shots(load_probes(args.world / f"shots-{args.task}.jsonl"), 0))
        subprocess.run([*sg, *home, "vector", "extract", "--aligned", str(args.world / "aligned"), "--degraded",
                        str(args.world / "degraded"), "--name", "smol-safety"], check=True)  # fmt: skip
        cmd = ["patch", str(args.world / f"task-{args.task}"), "--vector", "smol-safety", "--shots", str(shots),
               "--layers", "all", "--out", f"{tmp}/patched"]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([*sg, *home, "--json", *cmd], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(out.stdout)
    doc = {"command": "safegene " + " ".join(cmd), "wall_seconds": round(wall, 1),
           "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
           "peak_rss_mib": round(after.ru_maxrss / 1024),  # the largest child so far: the patch (extract is smaller)
           "target_seconds": TARGET_SECONDS, "met": wall <= TARGET_SECONDS, "blocks": len(res["coefficients"]),
           "commit": commit, "dirty": dirty, "machine": machine(),
           "torch_threads_default": os.cpu_count()}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "patch-real.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = "\n".join([
        "# `patch --coefficients auto` on SmolLM2-135M-Instruct", "",
        f"`python benchmarks/patch_real.py`; commit `{(commit or '?')[:10]}`{' (dirty)' if dirty else ''}, "
        f"{doc['machine']['cpus']} CPUs, torch {doc['machine']['torch']}.", "",
        md_table(["command", "wall s", "CPU s", "peak RSS MiB", f"≤ {TARGET_SECONDS} s"],
                 [[f"`{doc['command']}`", doc["wall_seconds"], doc["cpu_seconds"], doc["peak_rss_mib"],
                   "met" if doc["met"] else "missed"]]), ""])  # fmt: skip
    (args.results / "patch-real.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

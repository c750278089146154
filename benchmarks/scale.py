"""Performance at real model scale: extract, codec, patch and recalibration, each against its peer.

One run generates Llama-shaped bf16 checkpoints (hidden 2048, ≈1.5 GB at 14
blocks; see benchmarks/_bigmodel.py for how the fine-tuned twins copy the
statistics of real fine-tune deltas), then measures, each figure as a ratio
within this run on the same inputs, every job in its own fresh process (peak
RSS from the kernel's rusage of that child):

* extract: ``Registry.extract_vector`` vs reading both checkpoints once
  through safetensors (the floor), interleaved, page cache warm, at N and 2N blocks;
* codec: the registry codec vs plain zstd level 3 vs ZipNN on that vector's slices;
* patch: the ``safegene patch`` command (uniform:1.0, all layers) vs mergekit ``task_arithmetic``
  (``mergekit-yaml --lazy-unpickle``), each started with its inputs in the page cache, with
  the two outputs compared tensor by tensor;
* recalibration: ``recalibrate`` on 32 shots of the full toy world vs safety
  fine-tuning the target on the same shots until its harmful rate matches.

Two targets are also set against what this machine can do at all, measured in
the same run: extraction against the CPU time of the work the design requires
of it (identity hashes, difference, content addresses, codec, digests) spread
over every core; recalibration against one forward (and one forward + backward)
over the shots.

Peers (zipnn, mergekit) come from benchmarks/.peers-venv (``make bench-peers``);
without it their rows say "not installed".

    python benchmarks/scale.py [--quick] [--out DIR] [--work /tmp/sg-scale] [--repeats 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bigmodel as bm  # noqa: E402
from _common import md_table, write_results  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".peers-venv" / "bin"
JOBS = HERE / "_scale_jobs.py"
# The CLI beside this interpreter (a venv's console script), else the package's __main__.
_SAFEGENE = Path(sys.executable).parent / "safegene"
SAFEGENE_CMD = [str(_SAFEGENE)] if _SAFEGENE.is_file() else [sys.executable, "-m", "cli"]
PEER_JOBS = HERE / "_peer_jobs.py"
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_measured(cmd: list[str], *, timeout: float = 1800) -> dict[str, Any]:
    """Like :func:`run_child` but peak RSS from ``os.wait4`` on the child (exact, for any program)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{out[-3000:]}")
    result: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
    result.update(wall_s=wall, maxrss_mib=usage.ru_maxrss / 1024, user_s=usage.ru_utime, sys_s=usage.ru_stime)
    return result


def job(name: str, **kwargs: Any) -> dict[str, Any]:
    return run_measured([sys.executable, str(JOBS), name, json.dumps(kwargs)])


def peers_ready() -> bool:
    return (PEERS / "python").is_file() and (PEERS / "mergekit-yaml").is_file()


# --- inputs -------------------------------------------------------------------


def get_world(work: Path, quick: bool, world: Path | None) -> Path:
    from registry.toy import build_world

    if world is not None:
        return world
    path = work / ("world-quick" if quick else "world")
    if not (path / "world.json").is_file():
        log(f"building the {'quick ' if quick else ''}toy world in {path} (full: ~5 min, once)")
        build_world("llama", path, quick=quick)
    return path


def generate(work: Path, world: Path, quick: bool, layers: list[int]) -> dict[int, dict[str, Path]]:
    res = job("generate", work=str(work), world=str(world), quick=quick, layers=layers)
    return {int(n): {k: Path(v) for k, v in dirs.items()} for n, dirs in res["dirs"].items()}


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


# --- figures ------------------------------------------------------------------


def bench_extract(work: Path, pairs: dict[int, dict[str, Path]], repeats: int, *, warm: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (n, dirs) in enumerate(pairs.items()):
        rows = []
        reps = repeats if i == 0 else max(1, repeats - 1)  # the doubled size: fewer runs keep the total bounded
        if warm:  # warm the page cache (the quick run's files are still cached from being written)
            job("floor", dirs=[str(dirs["aligned"]), str(dirs["degraded"])])
        for r in range(reps):
            floor = job("floor", dirs=[str(dirs["aligned"]), str(dirs["degraded"])])
            home = work / f"home-extract-l{n}-{r}"
            shutil.rmtree(home, ignore_errors=True)
            ext = job("extract", home=str(home), aligned=str(dirs["aligned"]), degraded=str(dirs["degraded"]))
            rows.append({"floor": floor, "extract": ext, "ratio": ext["seconds"] / floor["seconds"]})
            log(f"extract l{n} #{r}: {ext['seconds']:.2f}s vs floor {floor['seconds']:.2f}s, "
                f"RSS {ext['maxrss_mib']:.0f} MiB")  # fmt: skip
            if r < reps - 1 or n != min(pairs):
                shutil.rmtree(home, ignore_errors=True)
        cold = []
        if i == 0:  # cold page cache (files evicted before each run): reads come from the disk
            for r in range(reps):
                floor = job("floor", dirs=[str(dirs["aligned"]), str(dirs["degraded"])], cold=True)
                home = work / f"home-extract-cold-l{n}-{r}"
                shutil.rmtree(home, ignore_errors=True)
                ext = job("extract", home=str(home), aligned=str(dirs["aligned"]), degraded=str(dirs["degraded"]),
                          cold=True)  # fmt: skip
                shutil.rmtree(home, ignore_errors=True)
                cold.append({"floor": floor, "extract": ext, "ratio": ext["seconds"] / floor["seconds"]})
                log(f"extract cold l{n} #{r}: {ext['seconds']:.2f}s vs cold floor {floor['seconds']:.2f}s")
        out[str(n)] = {"bytes": dir_bytes(dirs["aligned"]) + dir_bytes(dirs["degraded"]), "runs": rows, "cold": cold,
                       "ratio_median": statistics.median(x["ratio"] for x in rows),
                       "extract_s_median": statistics.median(x["extract"]["seconds"] for x in rows),
                       "floor_s_median": statistics.median(x["floor"]["seconds"] for x in rows),
                       "extract_rss_mib_max": max(x["extract"]["maxrss_mib"] for x in rows),
                       "floor_rss_mib_max": max(x["floor"]["maxrss_mib"] for x in rows)}  # fmt: skip
    return out


def bench_codec(work: Path, home: Path, repeats: int, dirs: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The codecs on the vector's slices, and the CPU cost of extraction's required work on the same inputs."""
    pay = work / "payloads"
    shutil.rmtree(pay, ignore_errors=True)
    pay.mkdir(parents=True)
    files = job("dump", home=str(home), out=str(pay))["files"]
    read_through(dirs["aligned"], dirs["degraded"])
    bound = job("required_work", aligned=str(dirs["aligned"]), degraded=str(dirs["degraded"]), files=files)
    log(f"extract's required work: {bound['total_cpu_s']:.2f} CPU-s, ≥ {bound['bound_s']:.2f} s on {bound['cores']} cores")
    res: dict[str, Any] = {}
    for _ in range(1):
        res["registry"] = job("codec", files=files, which="registry", repeats=repeats)
        res["zstd-3"] = job("codec", files=files, which="zstd", repeats=repeats)
        if peers_ready():
            res["zipnn"] = run_measured([str(PEERS / "python"), str(PEER_JOBS), "zipnn",
                                         json.dumps({"files": files, "repeats": repeats})])  # fmt: skip
    for r in res.values():
        r.update(ratio=r["raw"] / r["stored"], enc_mb_s=r["raw"] / r["enc_s"] / 1e6, dec_mb_s=r["raw"] / r["dec_s"] / 1e6)
    shutil.rmtree(pay, ignore_errors=True)
    return res, bound


def mergekit_config(path: Path, dirs: dict[str, Path]) -> Path:
    cfg = (f"merge_method: task_arithmetic\nbase_model: {dirs['degraded']}\nmodels:\n"
           f"  - model: {dirs['aligned']}\n    parameters:\n      weight: 1.0\n"
           f"  - model: {dirs['task']}\n    parameters:\n      weight: 1.0\n"
           "parameters:\n  normalize: false\ndtype: float32\nout_dtype: bfloat16\n")  # fmt: skip
    path.write_text(cfg)
    return path


def read_through(*dirs: Path) -> None:
    """Read every file under ``dirs`` once (untimed), so that a timed command finds its inputs in the page cache."""
    buf = bytearray(8 << 20)
    for d in dirs:
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def bench_patch(work: Path, home: Path, dirs: dict[str, Path], repeats: int) -> dict[str, Any]:
    cfg = mergekit_config(work / "mergekit.yml", dirs)
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        row: dict[str, Any] = {}
        out = work / f"patched-registry-{r}"
        shutil.rmtree(out, ignore_errors=True)
        # The command a user runs, timed like mergekit's (its CLI): start-up included
        # (a job process here would also import the harness's transformers). Each
        # command starts with its inputs in the page cache, whatever ran before it.
        read_through(dirs["task"], home / "store")
        row["registry"] = run_measured([*SAFEGENE_CMD, "--home", str(home), "--json", "patch", str(dirs["task"]),
                                        "--vector", "scale-vector", "--out", str(out),
                                        "--coefficients", "uniform:1.0", "--layers", "all"])  # fmt: skip
        log(f"patch #{r}: registry {row['registry']['wall_s']:.1f}s, RSS {row['registry']['maxrss_mib']:.0f} MiB")
        if peers_ready():
            mout = work / f"patched-mergekit-{r}"
            shutil.rmtree(mout, ignore_errors=True)
            read_through(dirs["aligned"], dirs["degraded"], dirs["task"])
            row["mergekit"] = run_measured([str(PEERS / "mergekit-yaml"), str(cfg), str(mout), "--lazy-unpickle",
                                            "--out-shard-size", "1B", "--no-copy-tokenizer", "--quiet",
                                            "--no-write-model-card", "-j", str(os.cpu_count() or 1)])  # fmt: skip
            log(f"patch #{r}: mergekit {row['mergekit']['wall_s']:.1f}s, RSS {row['mergekit']['maxrss_mib']:.0f} MiB")
            if r == repeats - 1:
                row["compare"] = job("compare", a=str(out), b=str(mout), target=str(dirs["task"]))
            else:
                shutil.rmtree(mout, ignore_errors=True)
        if r < repeats - 1:
            shutil.rmtree(out, ignore_errors=True)
        runs.append(row)
    res: dict[str, Any] = {"runs": runs, "target_bytes": dir_bytes(dirs["task"])}
    res["registry_s_median"] = statistics.median(x["registry"]["wall_s"] for x in runs)
    res["registry_rss_mib_max"] = max(x["registry"]["maxrss_mib"] for x in runs)
    if peers_ready():
        res["mergekit_s_median"] = statistics.median(x["mergekit"]["wall_s"] for x in runs)
        res["mergekit_rss_mib_max"] = max(x["mergekit"]["maxrss_mib"] for x in runs)
        res["speedup_median"] = statistics.median(x["mergekit"]["wall_s"] / x["registry"]["wall_s"] for x in runs)
        res["compare"] = runs[-1]["compare"]
    return res


def bench_recal(work: Path, world: Path, quick: bool) -> dict[str, Any]:
    home = work / "home-recal"
    shutil.rmtree(home, ignore_errors=True)
    recal = job("recal", home=str(home), world=str(world), quick=quick)
    shutil.rmtree(home, ignore_errors=True)
    log(f"recalibrate: {recal['seconds']:.1f}s ({recal['fit_seconds']:.1f}s fitting), "
        f"HRR {recal['hrr_target']} -> {recal['hrr_recalibrated']}")
    # HRR checked after every step (not timed), so the step count is exact.
    ft = job("finetune", world=str(world), hrr_goal=recal["hrr_recalibrated"], max_steps=20 if quick else 300,
             every=1, quick=quick)  # fmt: skip
    log(f"fine-tune: {ft['train_seconds']:.1f}s train, {ft['steps']} steps, HRR {ft['hrr']} reached={ft['reached']}")
    passes = job("pass_cost", world=str(world), repeats=3 if quick else 7)
    log(f"one pass over the shots: forward {passes['forward_s'] * 1e3:.0f} ms, "
        f"forward + backward {passes['forward_backward_s'] * 1e3:.0f} ms")
    # Like for like: the optimisation with the model loaded and the shots encoded, on both sides.
    return {"recalibrate": recal, "finetune": ft, "passes": passes, "ratio": recal["fit_seconds"] / ft["train_seconds"]}


# --- report -------------------------------------------------------------------


def _ok(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def report(d: dict[str, Any]) -> str:
    from _scale_report import render

    return render(d, md_table, _ok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Tiny shapes and the quick toy world (CI, < 60 s).")
    ap.add_argument("--out", type=Path, help="Where RESULTS.md and results/ go (default: benchmarks/; "
                    "quick: benchmarks/out/).")  # fmt: skip
    ap.add_argument("--work", type=Path, default=Path("/tmp/sg-scale"), help="Scratch for the big checkpoints.")
    ap.add_argument("--world", type=Path, help="A built full toy world (default: build one under --work).")
    ap.add_argument("--layers", default=None, help="Two block counts, N,2N (default 14,28; quick 2,4).")
    ap.add_argument("--repeats", type=int, default=None, help="Runs per figure (default 3; quick 1).")
    ap.add_argument("--skip", default="", help="Comma list of figures to skip: extract,codec,patch,recal.")
    ap.add_argument("--keep", action="store_true", help="Keep the generated checkpoints in --work.")
    args = ap.parse_args()
    quick = args.quick
    out_root = args.out or (HERE / "out" if quick else HERE)
    work = args.work / ("quick" if quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in (args.layers or ("2,4" if quick else "14,28")).split(",")]
    repeats = args.repeats or (1 if quick else 3)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()
    world = get_world(args.work, quick, args.world)
    shape = bm.QUICK if quick else bm.FULL
    pairs = generate(work, world, quick, layers)
    data: dict[str, Any] = {"quick": quick, "shape": shape.__dict__, "layers": layers, "repeats": repeats,
                            "world": str(world), "peers": peers_ready(),
                            "delta_profile": {"degraded": bm.describe(bm.delta_profile(world / "aligned", world / "degraded")),
                                              "task": bm.describe(bm.delta_profile(world / "aligned", world / "task-add"))}}  # fmt: skip
    small = pairs[layers[0]]
    home = work / f"home-extract-l{layers[0]}-{repeats - 1}"
    if "extract" not in skip:
        data["extract"] = bench_extract(work, pairs, repeats, warm=not quick)
    if "codec" not in skip and home.is_dir():
        log("codec")
        data["codec"], data["extract_bound"] = bench_codec(work, home, 1 if quick else 2, small)
    if "patch" not in skip and home.is_dir():
        data["patch"] = bench_patch(work, home, small, repeats if quick else 2)
    if "recal" not in skip:
        data["recal"] = bench_recal(work, world, quick)
    data["total_seconds"] = time.perf_counter() - t_start
    # A child's ru_maxrss starts from the parent's high-water mark: this must stay below every figure.
    data["parent_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    md = report(data)
    name = "scale-quick" if quick else "scale"
    write_results(name, data, md, root=out_root / "results")
    from _scale_report import update_results_md

    update_results_md(out_root / "RESULTS.md", md, quick=quick)
    print(md)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

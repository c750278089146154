"""The bucket store against the local store: extract and patch on the scale benchmark's pair.

An S3 service on loopback (moto's server, in its own process) holds the
bucket; each command is the one a user runs (`safegene vector extract`,
`safegene patch`), in a fresh process, timed whole, alternating local and
bucket runs. Three figures, each a ratio within this run:

* extract to the bucket ÷ extract to the local directory;
* the first patch from the bucket (empty read cache: every slice downloaded) ÷ the local patch;
* a second patch from the bucket (the read cache holds every slice) ÷ the local patch,
  and the first ÷ the second: what the cache saves when one vector patches many models.

moto is a Python server sharing this machine's cores with the client, so the
overhead here is an upper bound on a LAN object store's protocol cost, not a
measure of S3's bandwidth.

    python benchmarks/store_s3.py [--quick] [--out DIR] [--work /tmp/sg-store-s3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, md_table, write_results  # noqa: E402
from efficacy_real import git_state  # noqa: E402
from scale import SAFEGENE_CMD, generate, get_world, log, run_measured  # noqa: E402

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "safegene-bench"


def start_server(port: int) -> subprocess.Popen[bytes]:
    code = ("import logging, sys; logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
            "from moto.server import ThreadedMotoServer\n"
            f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start()\n"
            "import threading; threading.Event().wait()")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            return proc
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the loopback S3 server did not start")


def sg(home: Path, store: str | None, *args: str) -> dict[str, Any]:
    cmd = [*SAFEGENE_CMD, "--home", str(home), *(["--store", store] if store else []), "--json", *args]
    return run_measured(cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Tiny shapes and the quick toy world (CI, < 2 min).")
    ap.add_argument("--out", type=Path, help="Where results/ go (default: benchmarks/results).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sg-store-s3"), help="Scratch for checkpoints and homes.")
    ap.add_argument("--world", type=Path, help="A built toy world (default: build one under --work).")
    ap.add_argument("--layers", type=int, default=None, help="Blocks of the generated pair (default 14; quick 2).")
    ap.add_argument("--repeats", type=int, default=None, help="Runs per figure (default 3; quick 1).")
    args = ap.parse_args()
    layers = args.layers or (2 if args.quick else 14)
    repeats = args.repeats or (1 if args.quick else 3)
    commit, dirty = git_state()
    t_start = time.perf_counter()
    work = args.work / ("quick" if args.quick else "full")
    world = get_world(args.work, args.quick, args.world)
    dirs = generate(work, world, args.quick, [layers])[layers]
    port = free_port()
    os.environ.update({**S3_ENV, "SAFEGENE_STORE_ENDPOINT": f"http://127.0.0.1:{port}"})
    server = start_server(port)
    runs: list[dict[str, Any]] = []
    try:
        for r in range(repeats):
            row: dict[str, Any] = {}
            for kind in ("local", "s3"):
                home = work / f"home-{kind}-{r}"
                shutil.rmtree(home, ignore_errors=True)
                store = f"s3://{BUCKET}/run{r}" if kind == "s3" else None
                row[f"extract_{kind}"] = sg(home, store, "vector", "extract", "--aligned", str(dirs["aligned"]),
                                            "--degraded", str(dirs["degraded"]), "--name", "v")  # fmt: skip
                log(f"#{r} extract {kind}: {row[f'extract_{kind}']['wall_s']:.1f}s")
            patches = [("local", "local"), ("s3_cold", "s3"), ("s3_warm", "s3")]
            for label, kind in patches:
                home = work / f"home-{kind}-{r}"
                out = work / f"patched-{label}-{r}"
                shutil.rmtree(out, ignore_errors=True)
                row[f"patch_{label}"] = sg(home, None, "patch", str(dirs["task"]), "--vector", "v", "--out", str(out),
                                           "--coefficients", "uniform:1.0", "--layers", "all")  # fmt: skip
                log(f"#{r} patch {label}: {row[f'patch_{label}']['wall_s']:.1f}s")
                shutil.rmtree(out, ignore_errors=True)
            row["stored_bytes"] = sum(f.stat().st_size for f in (work / f"home-local-{r}" / "store").rglob("*")
                                      if f.is_file() and "blobs" in f.parts)  # fmt: skip
            runs.append(row)
            for kind in ("local", "s3"):
                shutil.rmtree(work / f"home-{kind}-{r}", ignore_errors=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    import resource

    data = summarise(runs, layers=layers, quick=args.quick, commit=commit, dirty=dirty,
                     total_s=time.perf_counter() - t_start,
                     driver_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
    write_results("store-s3-quick" if args.quick else "store-s3", data, report(data), root=args.out)
    if args.quick:
        shutil.rmtree(work, ignore_errors=True)


def summarise(runs: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key]["wall_s"] for r in runs)

    figures = {
        "extract": {"local_s": med("extract_local"), "s3_s": med("extract_s3")},
        "patch_cold": {"local_s": med("patch_local"), "s3_s": med("patch_s3_cold")},
        "patch_warm": {"local_s": med("patch_local"), "s3_s": med("patch_s3_warm")},
    }
    for f in figures.values():
        f["overhead_ratio"] = f["s3_s"] / f["local_s"]
    cache = {"cold_s": med("patch_s3_cold"), "warm_s": med("patch_s3_warm")}
    cache["cold_over_warm"] = cache["cold_s"] / cache["warm_s"]
    rss = {k: max(r[k]["maxrss_mib"] for r in runs) for k in runs[0] if isinstance(runs[0][k], dict)}
    return {**meta, "runs": runs, "figures": figures, "cache": cache, "peak_rss_mib": rss,
            "stored_bytes": runs[0]["stored_bytes"]}  # fmt: skip


def report(d: dict[str, Any]) -> str:
    f, c = d["figures"], d["cache"]
    rows = [[name, f"{v['local_s']:.2f} s", f"{v['s3_s']:.2f} s", f"{v['overhead_ratio']:.2f}×"]
            for name, v in (("extract", f["extract"]), ("patch, empty read cache", f["patch_cold"]),
                            ("patch, warm read cache", f["patch_warm"]))]  # fmt: skip
    commit = (d["commit"] or "?")[:10] + (" (dirty)" if d["dirty"] else "")
    return "\n".join([
        "## Bucket store vs local store",
        "",
        f"`python benchmarks/store_s3.py{' --quick' if d['quick'] else ''}` at commit `{commit}` — the scale "
        f"benchmark's Llama-shaped pair at {d['layers']} blocks ({d['stored_bytes'] / 2**30:.2f} GiB of stored "
        f"blobs), every command a fresh `safegene` process, median of {len(d['runs'])} run(s); the bucket is "
        "moto's S3 server on loopback (a Python process sharing the cores): an upper bound on a LAN object "
        f"store's protocol cost. Total {d['total_s'] / 60:.1f} min.",
        "",
        md_table(["command", "local store", "bucket store", "bucket ÷ local"], rows),
        "",
        f"Read cache: the first patch from the bucket took {c['cold_s']:.2f} s, the second {c['warm_s']:.2f} s "
        f"({c['cold_over_warm']:.2f}× faster: every slice came from the verified local copy).",
        "",
        "Peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in d["peak_rss_mib"].items())
        + f" (a child's figure starts from the driver's own peak, {d['driver_rss_mib']:.0f} MiB).",
    ])


if __name__ == "__main__":
    main()

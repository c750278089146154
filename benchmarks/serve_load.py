"""`safegene serve` under load: 16 concurrent clients for 30 s against 100,000 vectors on PostgreSQL.

A fresh PostgreSQL database gets the real migrations, then synthetic catalog rows in bulk
(`catalog_scale.populate`: 100,000 vectors over 1,000 families, 4 layer rows each, one tiny real
checkpoint's family holding 100 of them; plain INSERTs of many rows at once, as a load test may)
and a real audit chain of patch events appended through the library. `safegene serve` then runs as
its own uvicorn process, and clients on loopback (asyncio + httpx, keep-alive; one process) call
the inventory (`/api/families`), a random vector (`/api/vectors/NAME`) and the audit timeline
(`/api/audit`) in turn. Each client waits ``--think-ms`` between its requests (0: as fast as the
server answers). Reported: p50/p95/max latency per endpoint, requests/s, errors, the server's
resident memory (sampled every 0.5 s) and the git commit.

    python benchmarks/serve_load.py [--vectors 100000] [--clients 16] [--seconds 30] [--think-ms 0] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, md_table, write_results  # noqa: E402
from catalog_scale import _tiny, populate  # noqa: E402
from efficacy_real import git_state  # noqa: E402

from registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = ("inventory", "vector", "audit")


def _path(kind: str, n_vectors: int, rng: random.Random) -> str:
    if kind == "inventory":
        return "/api/families?limit=50"
    if kind == "vector":
        return f"/api/vectors/vec-{rng.randrange(n_vectors)}"
    return "/api/audit?limit=50"


def add_events(reg: Registry, n: int) -> None:
    """``n`` patch events appended through the audit log (a valid chain), naming random vectors."""
    vecs = [v.hash for v in reg.vectors_page(limit=200)]

    def tx(session: Any) -> None:
        for i in range(n):
            reg.audit.append(session, "patch", {"vector": f"vec-{i}", "coefficients": {"0": 0.5, "1": 0.7}},
                             vector_hash=vecs[i % len(vecs)], target_hash=uuid.uuid4().hex * 2,
                             output_hash=uuid.uuid4().hex * 2)  # fmt: skip

    reg.transaction(tx)


async def _client(url: str, n_vectors: int, until: float, think_s: float, seed: int,
                  out: dict[str, list[float]], errors: list[str]) -> None:  # fmt: skip
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        i = seed
        while time.perf_counter() < until:
            kind = ENDPOINTS[i % len(ENDPOINTS)]
            i += 1
            t0 = time.perf_counter()
            r = await client.get(_path(kind, n_vectors, rng))
            out[kind].append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"{kind} {r.status_code}")
            if think_s:
                await asyncio.sleep(think_s)


def run_load(url: str, n_vectors: int, clients: int, seconds: float, think_s: float) -> tuple[dict[str, list[float]], list[str], float]:
    out: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    errors: list[str] = []

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(url, n_vectors, until, think_s, s, out, errors) for s in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    return out, errors, time.perf_counter() - t0


def _pct(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2) if xs else float("nan")


def _commit_label() -> str:
    commit, dirty = git_state()
    return (commit or "?") + ("-dirty" if dirty else "")


def serve(home: Path, url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "--db", url, "serve", "--port", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("safegene serve did not start: " + log.read_text()[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--families", type=int, default=1_000)
    ap.add_argument("--events", type=int, default=2_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--think-ms", type=float, default=0.0, help="each client's pause between requests")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--quick", action="store_true", help="2,000 vectors, 4 clients, 5 s (a smoke run)")
    ap.add_argument("--out", type=Path, help="write results here instead of benchmarks/results/")
    args = ap.parse_args()
    if args.quick:
        args.vectors, args.families, args.events, args.clients, args.seconds = 2_000, 20, 100, 4, 5.0
    import psycopg

    work = Path(tempfile.mkdtemp(prefix="sg-serve-load-"))
    pg_db = f"sg_serve_load_{uuid.uuid4().hex[:8]}"
    admin = args.pg.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{pg_db}"')
    url = args.pg.rsplit("/", 1)[0] + f"/{pg_db}"
    proc = None
    try:
        t0 = time.perf_counter()
        with Registry.open(work / "home", url) as reg:
            populate(reg, _tiny(work / "target"), args.vectors, args.families)
            add_events(reg, args.events)
        load_s = time.perf_counter() - t0
        print(f"catalog filled in {load_s:.1f} s", flush=True)
        proc, base = serve(work / "home", url, work / "server.log")
        server = psutil.Process(proc.pid)
        for kind in ENDPOINTS:  # warm up: first queries, template and plan caches
            for i in range(20):
                httpx.get(base + _path(kind, args.vectors, random.Random(i)), timeout=30).raise_for_status()
        rss: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                rss.append(server.memory_info().rss)

        # One client alone first: what each endpoint costs when nothing queues.
        alone, _, _ = run_load(base, args.vectors, 1, min(10.0, args.seconds), 0.0)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = server.cpu_times()
        lat, errors, wall = run_load(base, args.vectors, args.clients, args.seconds, args.think_ms / 1000)
        cpu1 = server.cpu_times()
        stop.set()
        sampler.join()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
    results = {k: {"requests": len(v), "p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95), "max_ms": _pct(v, 1.0)}
               for k, v in lat.items()}  # fmt: skip
    total = sum(len(v) for v in lat.values())
    cpu_ms = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) * 1000 / max(total, 1)
    single = {k: {"requests": len(v), "p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95)} for k, v in alone.items()}
    data = {"server_cpu_ms_per_request": round(cpu_ms, 2), "one_client": single, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "commit": _commit_label(),
            "load_s": round(load_s, 1), "wall_s": round(wall, 1), "requests_per_s": round(total / wall, 1),
            "errors": len(errors), "error_samples": errors[:10], "endpoints": results,
            "server_rss_mib": {"max": round(max(rss) / 2**20, 1) if rss else None,
                               "last": round(rss[-1] / 2**20, 1) if rss else None}}  # fmt: skip
    rows = [[k, f"`{_path(k, 1, random.Random(0)).replace('vec-0', 'NAME')}`", r["requests"], r["p50_ms"], r["p95_ms"],
             r["max_ms"], "yes" if r["p95_ms"] <= 50 else "NO"] for k, r in results.items()]  # fmt: skip
    md = (f"# `safegene serve` under load: {args.vectors:,} vectors on PostgreSQL\n\n"
          f"{args.clients} concurrent clients for {args.seconds:g} s on loopback "
          f"({'no pause' if not args.think_ms else f'{args.think_ms:g} ms pause'} between a client's requests), "
          f"one `safegene serve` process (uvicorn); {args.vectors:,} vectors over {args.families:,} families, "
          f"{args.events:,} audit events. Commit `{data['commit']}`.\n\n"
          + md_table(["endpoint", "request", "requests", "p50 ms", "p95 ms", "max ms", "p95 ≤ 50 ms"], rows)
          + f"\n\n{data['requests_per_s']} requests/s in all, {data['errors']} errors; server RSS "
          f"{data['server_rss_mib']['max']} MiB at most ({data['server_rss_mib']['last']} MiB at the end). "
          f"Catalog filled in {data['load_s']} s.\n\n"
          f"The server spent {data['server_cpu_ms_per_request']} ms of CPU per request under this load; "
          f"{args.clients} clients that never pause queue behind one another in one Python process (its "
          f"GIL: at most one core), so a request waits for about {args.clients} others: "
          f"p50 ≈ {args.clients} × CPU per request. One client alone (10 s, nothing queued), for comparison:\n\n"
          + md_table(["endpoint", "requests", "p50 ms", "p95 ms"],
                     [[k, r["requests"], r["p50_ms"], r["p95_ms"]] for k, r in single.items()]) + "\n")
    print(md)
    write_results("serve-load-quick" if args.quick else "serve-load", data, md, root=args.out)


if __name__ == "__main__":
    main()

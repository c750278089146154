"""`safegene serve` under load: 16 concurrent clients for 30 s against 100,000 vectors on PostgreSQL.

A fresh PostgreSQL database gets the real migrations, then synthetic catalog rows in bulk
(`catalog_scale.populate`: 100,000 vectors over 1,000 families, 4 layer rows each, one tiny real
checkpoint's family holding 100 of them; plain INSERTs of many rows at once, as a load test may)
and a real audit chain of patch events appended through the library (naming 200 of the vectors), then
VACUUM ANALYZE. `safegene serve` then runs as its own uvicorn process, and clients on loopback (asyncio,
a minimal keep-alive HTTP/1.1 client; one process) call the inventory (`/api/families`), any vector
(`/api/vectors/NAME`), one of the vectors that patched models and the audit timeline (`/api/audit`) in turn. Each client waits ``--think-ms`` between its requests (0: as fast as the
server answers). Reported: p50/p95/max latency per endpoint, requests/s, errors, the server's
resident memory (sampled every 0.5 s) and the git commit.

    python benchmarks/serve_load.py [--vectors 100000] [--clients 16] [--seconds 30] [--think-ms 0]
        [--workers 1,2] [--quick]
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
from dataclasses import dataclass
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
ENDPOINTS = ("inventory", "vector", "patching vector", "audit")
REQUESTS = {"inventory": "/api/families?limit=50", "vector": "/api/vectors/NAME (any of them)",
            "patching vector": "/api/vectors/NAME (one that patched models)", "audit": "/api/audit?limit=50"}  # fmt: skip


@dataclass(frozen=True)
class Filled:
    """What the catalog holds: ``vectors`` named vec-0 …; ``patching``: the names of those the events name."""

    vectors: int
    patching: list[str]


def _path(kind: str, filled: Filled, rng: random.Random) -> str:
    if kind == "vector":
        return f"/api/vectors/vec-{rng.randrange(filled.vectors)}"
    if kind == "patching vector":
        return f"/api/vectors/{rng.choice(filled.patching)}"
    return REQUESTS[kind]


def add_events(reg: Registry, n: int, n_vectors: int = 200) -> list[str]:
    """``n`` patch events appended through the audit log (a valid chain), naming ``n_vectors`` vectors
    in turn (the newest); returns their names."""
    vecs = reg.vectors_page(limit=n_vectors)

    def tx(session: Any) -> None:
        for i in range(n):
            vec = vecs[i % len(vecs)]
            reg.audit.append(session, "patch", {"vector": vec.name, "coefficients": {"0": 0.5, "1": 0.7}},
                             vector_hash=vec.hash, target_hash=uuid.uuid4().hex * 2,
                             output_hash=uuid.uuid4().hex * 2)  # fmt: skip

    reg.transaction(tx)
    return [v.name for v in vecs]


def vacuum(url: str) -> None:
    """VACUUM ANALYZE: what autovacuum soon does to a table filled in bulk (its visibility map lets counts
    read an index alone); a load test that starts right after the bulk load would measure the bulk load."""
    import psycopg

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as c:
        c.execute("VACUUM ANALYZE")


class _Conn:
    """A minimal HTTP/1.1 keep-alive client for GETs (status line, Content-Length, body). The load
    generator shares the server's two cores; httpx spent about 1.2 ms of CPU per request, this about 0.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> _Conn:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _client(url: str, filled: Filled, until: float, think_s: float, seed: int,
                  out: dict[str, list[float]], errors: list[str]) -> None:  # fmt: skip
    rng = random.Random(seed)
    conn = await _Conn.open(url)
    try:
        i = seed
        while time.perf_counter() < until:
            kind = ENDPOINTS[i % len(ENDPOINTS)]
            i += 1
            t0 = time.perf_counter()
            status, body = await conn.get(_path(kind, filled, rng))
            out[kind].append(time.perf_counter() - t0)
            if status != 200 or not body.startswith(b"{"):
                errors.append(f"{kind} {status}")
            if think_s:
                await asyncio.sleep(think_s)
    finally:
        conn.close()


def run_load(url: str, filled: Filled, clients: int, seconds: float, think_s: float) -> tuple[dict[str, list[float]], list[str], float]:
    out: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    errors: list[str] = []

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(url, filled, until, think_s, s, out, errors) for s in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    return out, errors, time.perf_counter() - t0


def _pct(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2) if xs else float("nan")


def _commit_label() -> str:
    commit, dirty = git_state()
    return (commit or "?") + ("-dirty" if dirty else "")


def serve(home: Path, url: str, log: Path, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "--db", url, "serve", "--port", str(port),
                             "--workers", str(workers)],
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


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _postgres() -> list[psutil.Process]:
    """The PostgreSQL server's processes on this machine (none where it runs elsewhere)."""
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def measure(home: Path, url: str, args: argparse.Namespace, filled: Filled, workers: int, log: Path) -> dict[str, Any]:
    """Start `safegene serve --workers N`, warm it up, then one client alone and the load."""
    proc, base = serve(home, url, log, workers)
    try:
        server = psutil.Process(proc.pid)
        for kind in ENDPOINTS:  # warm up: first queries, template and plan caches, every worker's pool
            for i in range(20 * workers):
                httpx.get(base + _path(kind, filled, random.Random(i)), timeout=30).raise_for_status()
        rss: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                rss.append(sum(p.memory_info().rss for p in _tree(server)))

        # One client alone first: what each endpoint costs when nothing queues.
        alone, _, _ = run_load(base, filled, 1, min(10.0, args.seconds), 0.0)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        procs, pg = _tree(server), {p.pid: p for p in _postgres()}
        cpu0, pg0, me0 = _cpu_s(procs), _cpu_s(list(pg.values())), time.process_time()
        lat, errors, wall = run_load(base, filled, args.clients, args.seconds, args.think_ms / 1000)
        cpu1, me1 = _cpu_s(procs), time.process_time()
        # PostgreSQL: its processes' CPU since the start, those that connected during the load (the
        # server's pools fill up under load) whole; one that exited meanwhile is not counted.
        pg1 = _cpu_s([pg.get(p.pid, p) for p in _postgres()])
        stop.set()
        sampler.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    total = max(sum(len(v) for v in lat.values()), 1)
    return {
        "workers": workers, "wall_s": round(wall, 1), "requests_per_s": round(total / wall, 1),
        "errors": len(errors), "error_samples": errors[:10],
        "endpoints": {k: {"requests": len(v), "p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95), "max_ms": _pct(v, 1.0)}
                      for k, v in lat.items()},
        "one_client": {k: {"requests": len(v), "p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95)} for k, v in alone.items()},
        "cpu_ms_per_request": {"server": round((cpu1 - cpu0) * 1000 / total, 2), "postgres": round((pg1 - pg0) * 1000 / total, 2),
                               "clients": round((me1 - me0) * 1000 / total, 2)},
        "server_rss_mib": {"max": round(max(rss) / 2**20, 1) if rss else None,
                           "last": round(rss[-1] / 2**20, 1) if rss else None},
    }  # fmt: skip


def report(args: argparse.Namespace, runs: list[dict[str, Any]], load_s: float, commit: str) -> str:
    pause = "no pause" if not args.think_ms else f"{args.think_ms:g} ms pause"
    rows = [[r["workers"], k, f"`{REQUESTS[k]}`", e["requests"], e["p50_ms"],
             e["p95_ms"], e["max_ms"], "yes" if e["p95_ms"] <= 50 else "NO"]
            for r in runs for k, e in r["endpoints"].items()]  # fmt: skip
    totals = [[r["workers"], r["requests_per_s"], r["errors"], r["cpu_ms_per_request"]["server"],
               r["cpu_ms_per_request"]["postgres"], r["cpu_ms_per_request"]["clients"], r["server_rss_mib"]["max"]]
              for r in runs]  # fmt: skip
    alone = [[r["workers"], k, e["requests"], e["p50_ms"], e["p95_ms"]] for r in runs for k, e in r["one_client"].items()]
    return (f"# `safegene serve` under load: {args.vectors:,} vectors on PostgreSQL\n\n"
            f"{args.clients} concurrent clients for {args.seconds:g} s on loopback ({pause} between a client's "
            f"requests), `safegene serve --workers N` (uvicorn); {args.vectors:,} vectors over {args.families:,} "
            f"families, {args.events:,} audit events; the server, PostgreSQL and the clients share this machine's "
            f"{os.cpu_count()} cores. Commit `{commit}`.\n\n"
            + md_table(["workers", "endpoint", "request", "requests", "p50 ms", "p95 ms", "max ms", "p95 ≤ 50 ms"], rows)
            + "\n\nThroughput and CPU per request (server: all its processes; clients: the load generator):\n\n"
            + md_table(["workers", "requests/s", "errors", "server CPU ms", "PostgreSQL CPU ms", "clients CPU ms",
                        "server RSS MiB (max)"], totals)  # fmt: skip
            + f"\n\nClients that never pause keep {args.clients} requests in flight, so a request waits for "
            f"the others: p50 ≈ {args.clients} ÷ requests/s. One client alone (10 s, nothing queued), for "
            f"comparison:\n\n"
            + md_table(["workers", "endpoint", "requests", "p50 ms", "p95 ms"], alone)
            + f"\n\nCatalog filled in {load_s:.1f} s.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--families", type=int, default=1_000)
    ap.add_argument("--events", type=int, default=2_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--think-ms", type=float, default=0.0, help="each client's pause between requests")
    ap.add_argument("--workers", default="1,2", help="server processes, one run each (comma-separated)")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--quick", action="store_true", help="2,000 vectors, 4 clients, 5 s (a smoke run)")
    ap.add_argument("--out", type=Path, help="write results here instead of benchmarks/results/")
    args = ap.parse_args()
    if args.quick:
        args.vectors, args.families, args.events, args.clients, args.seconds = 2_000, 20, 100, 4, 5.0
    workers = [int(w) for w in args.workers.split(",")]
    import psycopg

    work = Path(tempfile.mkdtemp(prefix="sg-serve-load-"))
    pg_db = f"sg_serve_load_{uuid.uuid4().hex[:8]}"
    admin = args.pg.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{pg_db}"')
    url = args.pg.rsplit("/", 1)[0] + f"/{pg_db}"
    try:
        t0 = time.perf_counter()
        with Registry.open(work / "home", url) as reg:
            populate(reg, _tiny(work / "target"), args.vectors, args.families)
            filled = Filled(args.vectors, add_events(reg, args.events))
        vacuum(url)
        load_s = time.perf_counter() - t0
        print(f"catalog filled in {load_s:.1f} s", flush=True)
        runs = [measure(work / "home", url, args, filled, w, work / f"server-{w}.log") for w in workers]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
    commit = _commit_label()
    data = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "commit": commit,
            "load_s": round(load_s, 1), "cpus": os.cpu_count(), "runs": runs}  # fmt: skip
    md = report(args, runs, load_s, commit)
    print(md)
    write_results("serve-load-quick" if args.quick else "serve-load", data, md, root=args.out)


if __name__ == "__main__":
    main()

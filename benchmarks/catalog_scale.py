"""Resolver and catalog at scale: 100,000 vectors over 1,000 families, SQLite and PostgreSQL.

Synthetic rows (bulk-inserted, schema built by the real migrations) around one
real tiny checkpoint whose family holds 100 of the vectors; `resolve TARGET`
and `vector ls --family` are timed through the public API, then as whole
`safegene` commands (a fresh process each: start-up, opening the catalog, the
query, JSON output), and the query plans are printed (EXPLAIN / EXPLAIN QUERY
PLAN) to show the indexes in use.

    python benchmarks/catalog_scale.py [--vectors 100000] [--families 1000] [--runs 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import insert, text
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results  # noqa: E402

from registry import Registry  # noqa: E402
from registry.catalog import models as m  # noqa: E402
from registry.checkpoints.family import family_key, manifest_hash  # noqa: E402
from registry.checkpoints.reader import Checkpoint  # noqa: E402

LAYERS = 4
ROOT = Path(__file__).resolve().parent.parent


def _tiny(out: Path) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def populate(reg: Registry, target: Path, n_vectors: int, n_families: int) -> None:
    ck = Checkpoint(target)
    key = family_key(ck.config, ck.names())
    mh = manifest_hash(ck.manifest())
    shapes = {n: list(s) for n, s in ck.manifest().items() if "layers" in n and len(s) == 2}
    meta = json.dumps({"shapes": shapes, "source_manifest": mh, "scope": "blocks"})
    fams = [key.id] + [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(n_families - 1)]
    blob = "0" * 64
    with reg.engine.begin() as conn:
        conn.execute(insert(m.Family), [dict(id=f, model_type="llama" if i == 0 else f"synthetic{i}",
                                             architecture="LlamaForCausalLM", num_layers=LAYERS, hidden_size=32,
                                             vocab_size=64, key_json=json.dumps(key.to_json()), manifest_hash=mh,
                                             layer_templates="[]") for i, f in enumerate(fams)])  # fmt: skip
        conn.execute(insert(m.Blob), [dict(sha256=blob, codec="zstd", raw_size=1, stored_size=1)])
        per = n_vectors // n_families
        batch_v: list[dict[str, Any]] = []
        for i in range(n_vectors):
            batch_v.append(dict(id=i + 1, name=f"vec-{i}", hash=uuid.uuid4().hex + uuid.uuid4().hex,
                                family_id=fams[i // per % n_families], encoding="fp32", tensor_scope="blocks",
                                num_layers=LAYERS, raw_size=1, stored_size=1, meta_json=meta,
                                created_by="bench"))  # fmt: skip
            if len(batch_v) == 5000:
                _flush(conn, batch_v, blob)
        _flush(conn, batch_v, blob)
    if reg.engine.dialect.name == "postgresql":
        with reg.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def _flush(conn: Any, batch_v: list[dict[str, Any]], blob: str) -> None:
    if not batch_v:
        return
    conn.execute(insert(m.Vector), batch_v)
    conn.execute(insert(m.VectorLayer), [
        dict(vector_id=v["id"], position=p, layer_index=p, label=f"model.layers.{p}", tensor_names="[]",
             blob_sha256=blob, norm=1.0, score=0.1 * p, selected=p % 2 == 0)
        for v in batch_v for p in range(LAYERS)])  # fmt: skip
    batch_v.clear()


def _p(times: list[float], q: float) -> float:
    return sorted(times)[min(len(times) - 1, int(q * len(times)))] * 1000


def measure(reg: Registry, target: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, fn in (("resolve", lambda: reg.resolve(target, limit=10)),
                      ("vector ls --family", lambda: reg.list_vectors(family="llama"))):  # fmt: skip
        fn()  # warm caches
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t0)
        out[label] = {"p50_ms": round(_p(times, 0.5), 2), "p95_ms": round(_p(times, 0.95), 2),
                      "mean_ms": round(statistics.fmean(times) * 1000, 2), "results": len(res)}  # fmt: skip
    return out


def command_wall(home: Path, url: str | None, target: Path, runs: int) -> dict[str, Any]:
    """Wall time of the same two lookups as ``safegene`` commands, each a new process (what a user waits for)."""
    out: dict[str, Any] = {}
    base = [sys.executable, "-m", "cli", "--home", str(home), *(["--db", url] if url else []), "--json"]
    lookups = (("resolve", ["resolve", str(target)], "candidates"),
               ("vector ls --family", ["vector", "ls", "--family", "llama"], "vectors"))  # fmt: skip
    for label, args, key in lookups:
        times, found = [], set()
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.run([*base, *args], check=True, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - t0)
            found.add(len(json.loads(proc.stdout)[key]))
        out[label] = {"p50_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                      "results": found.pop() if len(found) == 1 else sorted(found)}  # fmt: skip
    return out


def plans(reg: Registry, family_id: str) -> list[str]:
    pg = reg.engine.dialect.name == "postgresql"
    explain = "EXPLAIN" if pg else "EXPLAIN QUERY PLAN"
    queries = [
        "SELECT * FROM vectors WHERE family_id = :f ORDER BY created_at DESC, id DESC",
        "SELECT * FROM vector_layers WHERE vector_id IN (1, 2, 3) ORDER BY position",
        "SELECT * FROM families WHERE model_type = :t OR architecture = :t LIMIT 5",
    ]
    out = []
    with reg.engine.connect() as conn:
        for q in queries:
            rows = conn.execute(text(f"{explain} {q}"), {"f": family_id, "t": "llama"}).all()
            out.append(q + "\n    " + "\n    ".join(" ".join(str(c) for c in r) for r in rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--families", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--command-runs", type=int, help="runs of each whole `safegene` command (default 7; quick 2)")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--quick", action="store_true", help="2,000 vectors over 20 families (CI).")
    ap.add_argument("--out", type=Path, help="write results here instead of benchmarks/results/")
    ap.add_argument("--work", type=Path, help="make the scratch homes in here (default: the system temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.vectors, args.families, args.runs = 2_000, 20, 10
    args.command_runs = args.command_runs or (2 if args.quick else 7)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sg-catalog-", dir=args.work))
    target = _tiny(work / "target")
    engines: list[tuple[str, str | None]] = [("sqlite", None)]
    pg_db = None
    try:
        import psycopg

        pg_db = f"sg_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg.replace("+psycopg", ""), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{pg_db}"')
        engines.append(("postgresql", args.pg.rsplit("/", 1)[0] + f"/{pg_db}"))
    except Exception as exc:  # noqa: BLE001
        print(f"PostgreSQL skipped: {exc}")
    results, plan_text = {}, {}
    try:
        for name, url in engines:
            reg = Registry.open(work / f"home-{name}", url)
            t0 = time.perf_counter()
            populate(reg, target, args.vectors, args.families)
            load_s = time.perf_counter() - t0
            results[name] = {"load_s": round(load_s, 1), **measure(reg, target, args.runs),
                             "command": command_wall(work / f"home-{name}", url, target, args.command_runs)}  # fmt: skip
            plan_text[name] = plans(reg, Checkpoint(target) and family_key(Checkpoint(target).config,
                                                                            Checkpoint(target).names()).id)
            reg.close()
            print(name, results[name], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if pg_db:
            with psycopg.connect(args.pg.replace("+psycopg", ""), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
    rows = [[eng, op, r[op]["results"], r[op]["p50_ms"], r[op]["p95_ms"], "yes" if r[op]["p95_ms"] <= 20 else "NO"]
            for eng, r in results.items() for op in ("resolve", "vector ls --family")]  # fmt: skip
    cmd_rows = [[eng, f"safegene {op}", r["command"][op]["p50_s"], r["command"][op]["max_s"]]
                for eng, r in results.items() for op in ("resolve", "vector ls --family")]  # fmt: skip
    md = (f"# Catalog at scale: {args.vectors:,} vectors over {args.families:,} families\n\n"
          + md_table(["engine", "operation", "results", "p50 ms", "p95 ms", "p95 ≤ 20 ms"], rows)
          + f"\n\n## Whole commands (a new process each, {args.command_runs} runs)\n\n"
          + md_table(["engine", "command", "median s", "max s"], cmd_rows)
          + "\n\n## Query plans\n\n" + "\n\n".join(f"**{e}**\n\n```\n" + "\n".join(p) + "\n```" for e, p in plan_text.items()))
    print(md)
    write_results("catalog-quick" if args.quick else "catalog", {"args": vars(args), "results": results,
                                                                  "plans": plan_text}, md, root=args.out)  # fmt: skip


if __name__ == "__main__":
    main()

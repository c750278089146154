"""Peer jobs run by the peers' virtual environment (benchmarks/.peers-venv), never by the registry.

    benchmarks/.peers-venv/bin/python benchmarks/_peer_jobs.py zipnn '{"files": [...], "repeats": 2}'

Prints one ``RESULT {json}`` line, like benchmarks/_scale_jobs.py.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any


def job_zipnn(files: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """ZipNN on the tensor bytes of each slice payload (float32), its defaults, all CPU threads."""
    from zipnn import ZipNN

    zpn = ZipNN(method="AUTO", input_format="byte", bytearray_dtype="float32", threads=multiprocessing.cpu_count())
    raw = stored = 0
    enc = dec = float("inf")
    for _ in range(repeats):
        t_enc = t_dec = 0.0
        raw = stored = 0
        for f in files:
            payload = Path(f["path"]).read_bytes()
            header, body = payload[: f["skip"]], payload[f["skip"] :]
            scratch = bytearray(body)  # zipnn 0.5 reorders its input in place (even bytes objects)
            t0 = time.perf_counter()
            blob = zpn.compress(scratch)
            t1 = time.perf_counter()
            back = zpn.decompress(blob)
            t_dec += time.perf_counter() - t1
            t_enc += t1 - t0
            assert bytes(back) == body, "zipnn round trip failed"
            raw, stored = raw + len(payload), stored + len(blob) + len(header)
        enc, dec = min(enc, t_enc), min(dec, t_dec)
    return {"raw": raw, "stored": stored, "enc_s": enc, "dec_s": dec, "version": _version("zipnn")}


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


if __name__ == "__main__":
    result = {"zipnn": job_zipnn}[sys.argv[1]](**json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)

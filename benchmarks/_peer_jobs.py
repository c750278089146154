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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_round_trips  # noqa: E402


def job_zipnn(files: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """ZipNN on the tensor bytes of each slice payload (float32), its defaults, all CPU threads."""
    from zipnn import ZipNN

    zpn = ZipNN(method="AUTO", input_format="byte", bytearray_dtype="float32", threads=multiprocessing.cpu_count())

    def round_trip(payload: bytes, skip: int) -> tuple[int, float, float]:
        header, body = payload[:skip], payload[skip:]
        scratch = bytearray(body)  # zipnn 0.5 reorders its input in place (even bytes objects)
        t0 = time.perf_counter()
        blob = zpn.compress(scratch)
        t1 = time.perf_counter()
        back = zpn.decompress(blob)
        t2 = time.perf_counter()
        assert bytes(back) == body, "zipnn round trip failed"
        return len(blob) + len(header), t1 - t0, t2 - t1

    return {**best_round_trips(files, repeats, round_trip), "version": _version("zipnn")}


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


if __name__ == "__main__":
    result = {"zipnn": job_zipnn}[sys.argv[1]](**json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)

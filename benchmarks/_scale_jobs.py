"""Child processes of benchmarks/scale.py: one measured job per process.

    python benchmarks/_scale_jobs.py JOB '{"arg": ...}'

Each job prints one JSON line (prefixed ``RESULT``) with its own timings and
``vm_hwm_mib`` (peak resident memory, read from /proc/self/status) so that
every figure comes from a fresh process with nothing else resident.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_round_trips  # noqa: E402


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def evict(dirs: list[str]) -> None:
    """Drop the checkpoints' pages from the page cache (posix_fadvise; no root needed).

    Only this guest's cache: a virtual disk may still be cached by its host, so
    "cold" reads here can be faster than a real cold disk.
    """
    for d in dirs:
        for f in sorted(Path(d).glob("*.safetensors")):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def job_floor(dirs: list[str], cold: bool = False) -> dict[str, Any]:
    """Read every tensor of each checkpoint once through safetensors (the physical floor)."""
    from safetensors import safe_open

    if cold:
        evict(dirs)
    t0 = time.perf_counter()
    nbytes = 0
    for d in dirs:
        for f in sorted(Path(d).glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                for k in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    # get_tensor maps the file lazily: copying the tensor is what reads its bytes
                    t = fh.get_tensor(k).clone()
                    nbytes += t.numel() * t.element_size()
                    del t
    return {"seconds": time.perf_counter() - t0, "bytes": nbytes}


def job_extract(home: str, aligned: str, degraded: str, cold: bool = False) -> dict[str, Any]:
    from registry import Registry

    reg = Registry.open(home)
    if cold:
        evict([aligned, degraded])
    t0 = time.perf_counter()
    vec = reg.extract_vector(aligned, degraded, name="scale-vector")
    secs = time.perf_counter() - t0
    return {"seconds": secs, "vector": vec.hash, "raw_size": vec.raw_size, "stored_size": vec.stored_size,
            "layers": len(vec.layers)}  # fmt: skip


def job_dump_payloads(home: str, out: str) -> dict[str, Any]:
    """Write each slice payload of the registry's one vector to ``out`` (codec inputs)."""
    from registry import Registry
    from registry.method.extract import payload_skip

    reg = Registry.open(home)
    vec = reg.list_vectors()[0]
    files = []
    for lay in vec.layers:
        payload = reg.store.get(lay.blob)
        p = Path(out) / f"{lay.position:04d}.st"
        p.write_bytes(payload)
        files.append({"path": str(p), "skip": payload_skip(payload)})
    return {"files": files}


def job_codec(files: list[dict[str, Any]], which: str, repeats: int) -> dict[str, Any]:
    """Compress / decompress the payloads with the registry codec or plain zstd level 3."""
    import zstandard

    from registry.store import codec

    scratch = codec.Scratch()  # decoded as the registry decodes slices when patching: into reused buffers

    def round_trip(payload: bytes, skip: int) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        if which == "registry":  # the parts the store writes (it never joins them: not timed)
            _, parts = codec.encode_parts(payload, skip=skip, width=4)
            t1 = time.perf_counter()
            blob = b"".join(parts)
        else:
            blob = zstandard.ZstdCompressor(level=3, threads=-1).compress(payload)
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        back = codec.decode(blob, scratch=scratch) if which == "registry" else zstandard.ZstdDecompressor().decompress(blob)
        t3 = time.perf_counter()
        assert bytes(back) == payload, "round trip failed"
        return len(blob), t1 - t0, t3 - t2

    return best_round_trips(files, repeats, round_trip)


def job_compare(a: str, b: str, target: str) -> dict[str, Any]:
    """Compare two checkpoints tensor by tensor (bf16 ulps), and each against the target."""
    from registry.checkpoints.reader import Checkpoint

    ca, cb, ct = Checkpoint(a), Checkpoint(b), Checkpoint(target)
    if ca.manifest() != cb.manifest():
        return {"same_manifest": False}
    exact = changed = 0
    worst_ulp = 0.0
    for n in ca.names():
        x, y = ca.get_tensor(n), cb.get_tensor(n)
        if x.dtype != y.dtype:
            y = y.to(x.dtype)
        if torch.equal(x, y):
            exact += 1
        else:
            xf, yf = x.float(), y.float()
            ulp = torch.finfo(x.dtype).eps * xf.abs().maximum(yf.abs()).clamp_min(torch.finfo(x.dtype).tiny)
            worst_ulp = max(worst_ulp, float(((xf - yf).abs() / ulp).max()))
        if not torch.equal(x, ct.get_tensor(n).to(x.dtype)):
            changed += 1
    return {"same_manifest": True, "tensors": len(ca.names()), "bit_identical": exact,
            "max_diff_ulps": worst_ulp, "tensors_changed_vs_target": changed}  # fmt: skip


def _shots32(world_dir: str) -> list[Any]:
    from registry.evaluation.probes import load_probes

    shots = load_probes(Path(world_dir) / "shots-add.jsonl")
    by = {k: [p for p in shots if p.kind == k] for k in ("harmful", "task", "benign")}
    return by["harmful"][:16] + by["task"][:8] + by["benign"][:8]


def _held_out(world_dir: str, kind: str, limit: int | None) -> list[Any]:
    """The held-out ``eval-add`` probes of one kind: the first ``limit`` (None: all)."""
    from registry.evaluation.probes import load_probes

    return [p for p in load_probes(Path(world_dir) / "eval-add.jsonl") if p.kind == kind][:limit]


def _harmful_eval(world_dir: str, quick: bool) -> list[Any]:
    return _held_out(world_dir, "harmful", 16 if quick else None)


def _side_effects(world_dir: str, quick: bool, model: Any, tok: Any) -> dict[str, Any]:
    """What a method costs besides the harmful rate: task accuracy and over-refusal on the
    held-out task and benign probes (evaluated after the timed part, never fitted on)."""
    from registry.evaluation.evaluate import evaluate_model

    probes = [p for kind in ("task", "benign") for p in _held_out(world_dir, kind, 8 if quick else None)]
    res = evaluate_model(None, probes, model=model, tokenizer=tok)
    return {"task_accuracy": res.task_accuracy, "benign_refusal_rate": res.benign_refusal_rate}


def job_recal(home: str, world: str, quick: bool) -> dict[str, Any]:
    from registry import Registry
    from registry.evaluation.evaluate import evaluate_model
    from registry.evaluation.textio import load_model, load_tokenizer
    from registry.method.recalibrate import apply_in_memory

    torch.set_num_threads(2)
    reg = Registry.open(home)
    w = Path(world)
    vec = reg.extract_vector(w / "aligned", w / "degraded", name="toy-vector")
    target = w / "task-add"
    reg.add_model(target, role="task")
    shots = _shots32(world)
    # The HRR before, measured first: like the fine-tune job, the timed part then
    # starts with transformers imported (its first import alone takes 1.5-3 s here).
    evals = _harmful_eval(world, quick)
    tok = load_tokenizer(target)
    target_model = load_model(target)
    before = evaluate_model(None, evals, model=target_model, tokenizer=tok).harmful_rate
    side_before = _side_effects(world, quick, target_model, tok)
    del target_model
    hwm_before = vm_hwm_mib()
    t0 = time.perf_counter()
    from registry.method.recalibrate import FitSettings

    settings = FitSettings(steps=5) if quick else None  # the smoke run only checks that the code runs
    fit = reg.recalibrate(target, vec.hash, shots, layers="all", use_cache=False, settings=settings)
    secs = time.perf_counter() - t0
    hwm = vm_hwm_mib()
    model = load_model(target)
    index_to_pos = {str(lay.index): lay.position for lay in vec.layers}
    slices = reg.load_vector_slices(vec, positions=list(index_to_pos.values()))
    apply_in_memory(model, slices, {index_to_pos[k]: v for k, v in fit.coefficients.items()})
    after = evaluate_model(None, evals, model=model, tokenizer=tok).harmful_rate
    return {"seconds": secs, "fit_seconds": fit.seconds, "vm_hwm_mib_fit": hwm, "vm_hwm_mib_before_fit": hwm_before,
            "hrr_target": before, "target": side_before, "after": _side_effects(world, quick, model, tok),
            "hrr_recalibrated": after, "shots": len(shots), "steps": len(fit.losses) - 1}  # fmt: skip


def _finetune_batch(world: str) -> tuple[Any, Any, list[Any], dict[str, torch.Tensor]]:
    """The target model, its tokenizer, and the fine-tune's shots and their one right-padded batch."""
    from registry.evaluation.textio import (
        collate,
        encode_example,
        load_model,
        load_tokenizer,
        pad_id_of,
    )

    target = Path(world) / "task-add"
    model, tok = load_model(target), load_tokenizer(target)
    shots = [p for p in _shots32(world) if p.response]  # benign shots without an answer give no SFT signal
    batch = collate([encode_example(tok, p.prompt, p.response) for p in shots], pad_id_of(tok), side="right")
    return model, tok, shots, batch


def job_finetune(world: str, hrr_goal: float, max_steps: int, every: int, quick: bool) -> dict[str, Any]:
    """Safety fine-tune the target on the same shots (full AdamW) until its HRR reaches ``hrr_goal``."""
    from registry.evaluation.evaluate import evaluate_model

    torch.set_num_threads(2)
    model, tok, shots, batch = _finetune_batch(world)
    evals = _harmful_eval(world, quick)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)  # the toy world's fine-tune lr
    train_s = eval_s = 0.0
    hrr, step = 1.0, 0
    curve = []
    while step < max_steps:
        model.train()
        t0 = time.perf_counter()
        for _ in range(every):
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        train_s += time.perf_counter() - t0
        model.eval()
        t0 = time.perf_counter()
        hrr = evaluate_model(None, evals, model=model, tokenizer=tok).harmful_rate or 0.0
        eval_s += time.perf_counter() - t0
        curve.append([step, hrr])
        if hrr <= hrr_goal:
            break
    model.eval()
    return {"train_seconds": train_s, "eval_seconds": eval_s, "steps": step, "hrr": hrr,
            "reached": hrr <= hrr_goal, "curve": curve, "shots_used": len(shots),
            "after": _side_effects(world, quick, model, tok)}  # fmt: skip


def job_generate(work: str, world: str, quick: bool, layers: list[int]) -> dict[str, Any]:
    """Generate the checkpoint families (in a child, so the parent's peak RSS stays small:
    a child's ru_maxrss starts from its parent's high-water mark at spawn)."""
    import _bigmodel as bm

    shape = bm.QUICK if quick else bm.FULL
    w = Path(world)
    deg = bm.delta_profile(w / "aligned", w / "degraded")
    task = bm.delta_profile(w / "aligned", w / "task-add")
    out: dict[str, dict[str, str]] = {}
    for i, n in enumerate(layers):
        root = Path(work) / f"llama-h{shape.hidden}-l{n}"
        names = ["aligned", "degraded", "task"] if i == 0 else ["aligned", "degraded"]
        if not (root / ".complete").is_file():
            print(f"generating {root.name} ({', '.join(names)})", file=sys.stderr, flush=True)
            import shutil

            shutil.rmtree(root, ignore_errors=True)
            bm.write_family(root, shape, n, deg, task if i == 0 else None,
                            shard_bytes=(700 << 20) if not quick else (1 << 20))  # fmt: skip
            (root / ".complete").write_text("ok\n")
        out[str(n)] = {k: str(root / k) for k in names}
    bm.check_loadable(Path(out[str(layers[0])]["task"]), instantiate=quick)
    return {"dirs": out}


def _fp32_difference(a: torch.Tensor, d: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> None:
    """``out = a − d`` in fp32, chunk by chunk through a cache-sized buffer (no large temporaries)."""
    a, d, out, step = a.reshape(-1), d.reshape(-1), out.reshape(-1), tmp.numel()
    for s in range(0, out.numel(), step):
        n = min(step, out.numel() - s)
        v = out[s : s + n]
        v.copy_(a[s : s + n])
        tmp[:n].copy_(d[s : s + n])
        v.sub_(tmp[:n])


def job_required_work(aligned: str, degraded: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds of the work the design requires of an extraction, each part alone in this process.

    The parts: both sources' identity hashes (sha256 over every tensor, reads
    included); the difference in fp32, chunked through a cache-sized buffer as
    the registry does it (inputs read and output mapped beforehand, untimed: the
    hashes already paid for one read); each slice's content address (sha256 of
    its payload); the codec (``encode_parts``; process time counts its threads);
    the two digests of the stored body (the codec's body digest and the store's
    file sha256). Divided by the cores, it is the least wall time this design
    with this codec could take here, with perfect overlap and nothing else.
    """
    import hashlib

    from registry.checkpoints.reader import Checkpoint
    from registry.method.extract import _scope_filter
    from registry.store import codec

    torch.set_num_threads(1)
    cpu: dict[str, float] = {}

    def timed(part: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        out = fn(*args, **kwargs)
        cpu[part] = cpu.get(part, 0.0) + time.process_time() - t0
        return out

    a_ck, d_ck = Checkpoint(aligned), Checkpoint(degraded)
    for ck in (a_ck, d_ck):
        timed("source identity hashes", ck.content_hash)
    diff_bytes = 0
    tmp = torch.empty(1 << 18, dtype=torch.float32)
    for name in _scope_filter(a_ck, "blocks"):
        a, d = a_ck.get_tensor(name).clone(), d_ck.get_tensor(name).clone()  # read, untimed
        out = torch.zeros(a.shape, dtype=torch.float32)  # its pages mapped, untimed
        timed("difference in fp32", _fp32_difference, a, d, out, tmp)
        diff_bytes += out.numel() * 4
        del a, d, out
    raw = stored = 0
    for f in files:
        payload = Path(f["path"]).read_bytes()
        timed("content addresses (sha256)", hashlib.sha256, payload)
        _, parts = timed("codec", codec.encode_parts, payload, skip=f["skip"], width=4)
        body = b"".join(parts)
        for _ in range(2):
            timed("stored body digests (2 × sha256)", hashlib.sha256, body)
        raw, stored = raw + len(payload), stored + len(body)
        del payload, parts, body
    cores = os.cpu_count() or 1
    return {"cpu_s": cpu, "total_cpu_s": sum(cpu.values()), "cores": cores,
            "bound_s": sum(cpu.values()) / cores, "diff_bytes": diff_bytes, "raw": raw, "stored": stored}  # fmt: skip


def job_pass_cost(world: str, repeats: int = 7) -> dict[str, Any]:
    """Seconds of one forward, and of one forward + backward, over the fine-tune's batch of shots.

    Any recalibration that looks at the shots runs at least one forward over
    them; a fitted one runs a forward and a backward per step (the λ gradient
    is the weights' gradient contracted with the vector). Median of ``repeats``
    after one untimed warm-up of each.
    """
    import statistics

    torch.set_num_threads(2)
    model, _, shots, batch = _finetune_batch(world)

    def forward() -> None:
        with torch.no_grad():
            model(**batch)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    out: dict[str, Any] = {"rows": len(shots), "tokens": int(batch["attention_mask"].sum())}
    for key, fn in (("forward_s", forward), ("forward_backward_s", forward_backward)):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[key] = statistics.median(times)
    return out


JOBS = {"generate": job_generate, "floor": job_floor, "extract": job_extract, "dump": job_dump_payloads, "codec": job_codec,
        "compare": job_compare, "recal": job_recal, "finetune": job_finetune,
        "required_work": job_required_work, "pass_cost": job_pass_cost}  # fmt: skip

if __name__ == "__main__":
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    result = JOBS[sys.argv[1]](**json.loads(sys.argv[2]))
    result["vm_hwm_mib"] = vm_hwm_mib()
    result["pid"] = os.getpid()
    print("RESULT " + json.dumps(result), flush=True)

"""The real-LM efficacy table: SafeGene against RESTA and a Safe LoRA-style projection on SmolLM2-135M-Instruct.

The world (``benchmarks/realworld_build.py``, :mod:`registry.realworld`) holds
an aligned, a degraded and two task-tuned models and its probe files. Through
the public :class:`registry.Registry` API only (plus
:mod:`registry.method.baselines` and :mod:`registry.evaluation`):

1. register aligned and degraded, extract ``smol-safety`` (reused when it
   exists), score its blocks on the world's ``shots.jsonl``;
2. per task model, the rows

       aligned       the safety reference
       target        the task model, unpatched
       RESTA         patch, coefficients uniform:1.0, every block
       projection    Safe LoRA-style projection (τ = 0.35, fixed in advance), in memory
       full+λ        patch, λ recalibrated on a seed's shot sample, every block      (per seed)
       SafeGene      patch, λ recalibrated on the same sample, selected blocks only  (per seed)

   A seed's shot sample is 24 harmful (with refusals) + 16 benign (own
   answers) + 16 task probes of ``shots-<task>.jsonl``, drawn with
   ``random.Random(seed)``. The fit uses the default ``FitSettings``: nothing
   is tuned on held-out prompts;
3. every row is evaluated on the held-out ``eval-<task>.jsonl`` with two
   judges: the keyword judge and a bag-of-words judge trained only on the
   world's training split (the taught refusals, the base model's own answers
   to benign training prompts). Evaluations are cached under ``--work`` by
   (model content hash or patch output hash, probe file sha256, judges, settings).

Writes ``benchmarks/results/efficacy-real.{md,json}`` (``--quick``:
``efficacy-real-quick.*``, a smoke run on one task, one seed, 8 held-out
prompts of each kind, layer scores on 16 shots and 2 fit steps). The JSON
records the commit, the machine and a digest of the code and world it ran on
(``benchmarks/_digest.py``), which the README's table checks.

    python benchmarks/efficacy_real.py [--world DIR] [--work DIR] [--seeds 0 1 2] [--tasks ...] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _digest import EFFICACY_REAL_FILES, table_digest  # noqa: E402
from _efficacy_real_report import (  # noqa: E402
    SHOT_COUNTS,
    bootstrap_ci,
    evaluate_criteria,
    render_markdown,
    sample_shots,
    spread,
    summarize,
)

from registry import Registry, VectorRecord  # noqa: E402
from registry.errors import AlreadyExistsError, InvalidInputError, NotFoundError  # noqa: E402
from registry.evaluation.probes import load_probes, probes_hash, write_probes  # noqa: E402

if TYPE_CHECKING:
    from registry.evaluation.evaluate import EvalResult
    from registry.evaluation.judges import Judge
    from registry.evaluation.scorers import Scorer
    from registry.method.fit_settings import FitSettings
    from registry.realworld import RealWorld

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VECTOR = "smol-safety"
TAU = 0.35  # Safe LoRA's threshold, fixed before any result was seen
EVAL = {"max_new_tokens": 64, "batch_size": 32}  # evaluate_model's defaults, written down
BOOTSTRAP = {"resamples": 1000, "seed": 0, "level": 0.95}
QUICK_EVAL = {"harmful": 8, "benign": 8, "task": 8}
QUICK_SCORE = {"harmful": 8, "benign": 4, "task": 4}
QUICK_STEPS = 2
CACHE_FORMAT = "efficacy-real-eval/1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _JsonStore:
    """A JSON object on disk, rewritten (atomically) after each change: the run's memory across re-runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def world_scorer(task: str) -> Scorer:
    """The task's scorer as the world defines it (first number; JSON fields), as an evaluation scorer."""
    from registry.evaluation.scorers import Scorer, get_scorer
    from registry.realworld import SCORERS

    fn = SCORERS.get(task)
    if fn is None:
        return get_scorer("exact")

    class WorldScorer(Scorer):
        name = f"world:{task}"

        def correct(self, *, response: str, gold: str) -> bool:
            return fn(response, gold)

    return WorldScorer()


def judge_training_texts(world: RealWorld) -> tuple[list[str], list[str], dict[str, Any]]:
    """Refusals and answers from the world's training split only (never shots, never held-out prompts).

    Refusals: the phrasings the aligned model was taught. Answers: the base
    model's own answers to the benign *training* prompts, from the world's
    cache; when that cache is gone, the benign answers of ``shots.jsonl``.
    """
    from registry.realworld.prompts import load_prompts, load_refusals

    refusals = list(load_refusals())
    train = {p.prompt for p in load_prompts("benign", "train")}
    answers: dict[str, str] = {}
    for f in sorted((world.root / "cache").glob("own-answers-*.json")):
        got = json.loads(f.read_text(encoding="utf-8"))
        answers.update(
            {k: v for k, v in got.items() if k in train and isinstance(v, str) and v.strip()}
        )
    source = "own answers to benign training prompts (world cache)"
    if not answers:
        answers = {
            p.prompt: p.response
            for p in load_probes(world.shots["all"])
            if p.kind == "benign" and p.response
        }
        source = "benign answers of shots.jsonl (world cache missing)"
    info = {"refusals": len(refusals), "refusal_source": "registry/realworld/data/refusals.jsonl",
            "answers": len(answers), "answer_source": source}  # fmt: skip
    return refusals, [answers[k] for k in sorted(answers)], info


class TableRun:
    """One run of the table: the registry steps, the rows, their evaluations, the results document."""

    def __init__(self, args: argparse.Namespace) -> None:
        from registry.method.fit_settings import FitSettings
        from registry.realworld import load_real_world

        self.args, self.quick = args, bool(args.quick)
        self.world = load_real_world(args.world)
        tasks = list(args.tasks or self.world.tasks)
        unknown = [t for t in tasks if t not in self.world.tasks]
        if unknown:
            raise SystemExit(f"unknown task(s) {unknown}; the world has {list(self.world.tasks)}")
        self.tasks = tasks[:1] if self.quick else tasks
        self.seeds = list(args.seeds[:1] if self.quick else args.seeds)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.settings: FitSettings = FitSettings(steps=QUICK_STEPS) if self.quick else FitSettings()
        self.timings = _JsonStore(self.work / "timings.json")
        # what the table ran on, taken before it starts (edits made while it runs do not count)
        self.commit, self.dirty = git_state()
        self.digest = table_digest(EFFICACY_REAL_FILES, [str((self.world.root / "world.json").resolve())])
        self.evals = _JsonStore(self.work / "eval-cache.json")

    # ---------------------------------------------------------------- steps

    def timed(self, key: str, fn: Callable[[], Any], *, cached: bool) -> tuple[Any, float | None]:
        """Run ``fn``; a step that did real work stores its seconds, a reused one reports the stored ones."""
        t0 = time.perf_counter()
        out = fn()
        if not cached:
            self.timings.put(key, round(time.perf_counter() - t0, 3))
        return out, self.timings.data.get(key)

    def vector(self, reg: Registry) -> VectorRecord:
        al = reg.add_model(self.world.models["aligned"], name="smol-aligned", role="aligned")
        dg = reg.add_model(
            self.world.models["degraded"], name="smol-degraded", role="degraded", parent=al.name
        )
        try:
            vec, cached = reg.get_vector(VECTOR), True
        except NotFoundError:
            vec, cached = None, False
        log("extracting the safety vector" if not cached else f"reusing vector {VECTOR}")
        vec, self.t_extract = self.timed("extract", lambda: vec or reg.extract_vector(
            al.name, dg.name, name=VECTOR), cached=cached)  # fmt: skip
        if vec.aligned != al.hash or vec.degraded != dg.hash:
            raise SystemExit(f"{VECTOR} in {self.work} was extracted from other checkpoints (world rebuilt?): "
                             "use a fresh --work")  # fmt: skip
        shots = self.world.shots["all"]
        if self.quick:
            shots = self.work / "score-shots-quick.jsonl"
            write_probes(shots, spread(load_probes(self.world.shots["all"]), QUICK_SCORE))
        digest = probes_hash(load_probes(shots))
        done = all(lay.probe_set == digest for lay in vec.layers if lay.index is not None)
        log("blocks already scored on these shots" if done else f"scoring blocks on {shots.name}")
        vec, self.t_score = self.timed("score", lambda: vec if done else reg.score_vector(vec.name, shots),
                                       cached=done)  # fmt: skip
        self.scored_on = {"file": str(shots), "probes_sha256": digest}
        log(f"selected blocks {[lay.index for lay in vec.layers if lay.selected]}")
        return vec

    def judges(self) -> list[Judge]:
        from registry.evaluation.bow_judge import BowJudge, train_bow_judge
        from registry.evaluation.judges import RefusalKeywordJudge

        refusals, answers, self.judge_info = judge_training_texts(self.world)
        path = self.work / f"bow-judge-{_sha_json([refusals, answers])[:16]}.safetensors"
        _, self.t_bow = self.timed("bow_judge", lambda: path.is_file() or train_bow_judge(refusals, answers, path),
                                   cached=path.is_file())  # fmt: skip
        self.judge_info["file_sha256"] = _sha_file(path)
        return [RefusalKeywordJudge(), BowJudge(path)]

    def shot_file(self, task: str, seed: int) -> Path:
        path = self.work / "shots" / f"{task}-seed{seed}.jsonl"
        path.parent.mkdir(exist_ok=True)
        write_probes(path, sample_shots(load_probes(self.world.shots[task]), seed))
        return path

    def eval_file(self, task: str) -> Path:
        if not self.quick:
            return self.world.eval[task]
        path = self.work / f"eval-{task}-quick.jsonl"
        write_probes(path, spread(load_probes(self.world.eval[task]), QUICK_EVAL))
        return path

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, model_id: str, probes_file: Path, task: str, judges: list[Judge], *,
                 model_dir: Path | None = None, load: Callable[[], tuple[Any, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
        """Metrics and per-prompt flags of one model on one probe file (cached; no response text is kept)."""
        from registry.evaluation.evaluate import evaluate_model

        config = {"judges": [j.describe() for j in judges], "bow": self.judge_info["file_sha256"],
                  "scorer": world_scorer(task).describe(), **EVAL, "format": CACHE_FORMAT}  # fmt: skip
        key = _sha_json([model_id, _sha_file(probes_file), config])
        if key in self.evals.data:
            return {**self.evals.data[key], "cached": True}
        probes = load_probes(probes_file)
        # a model folder is loaded (and timed) by evaluate_model; a model made in memory is loaded before
        model, tok = load() if load else (None, None)
        t0 = time.perf_counter()
        res = evaluate_model(model_dir, probes, judge=judges, scorer=world_scorer(task), model=model, tokenizer=tok,
                             **EVAL)  # type: ignore[arg-type]  # fmt: skip
        entry = {
            **eval_entry(res),
            "seconds": round(time.perf_counter() - t0, 3),
            "model": model_id,
        }
        self.evals.put(key, entry)
        return {**entry, "cached": False}

    # ---------------------------------------------------------------- rows

    def task_rows(
        self, reg: Registry, vec: VectorRecord, task: str, judges: list[Judge]
    ) -> list[dict[str, Any]]:
        target = self.world.task_model(task)
        aligned = reg.get_model("smol-aligned")
        tgt = reg.add_model(target, name=f"smol-task-{task}", role="task", parent=aligned.name)
        probes_file = self.eval_file(task)
        rows: list[dict[str, Any]] = []

        def add(method: str, seed: int | None, ev: dict[str, Any] | None, **extra: Any) -> None:
            row = {"task": task, "method": method, "seed": seed, **extra}
            if ev is not None:
                row.update(ev["metrics"], ci=ev["ci"], eval_cached=ev["cached"])
                row.setdefault("seconds", {})["eval"] = ev["seconds"]
            rows.append(row)
            rates = ", ".join(
                f"{k} {row.get(k)}" for k in ("refused", "degenerate", "over_refusal", "accuracy")
            )
            log(
                f"{task} {method}{'' if seed is None else f' seed {seed}'}: {row.get('failed') or rates}"
            )

        log(f"{task}: evaluating aligned and target")
        add(
            "aligned",
            None,
            self.evaluate(aligned.hash, probes_file, task, judges, model_dir=Path(aligned.path)),
        )
        add("target", None, self.evaluate(tgt.hash, probes_file, task, judges, model_dir=target))
        res, secs = self.patch(reg, task, "RESTA", None, coefficients="uniform:1.0", layers="all")
        add("RESTA", None, self.evaluate(res.hash, probes_file, task, judges, model_dir=Path(res.output)),
            coefficients=res.coefficients, seconds={"patch": secs})  # fmt: skip
        ev, extra = self.projection(reg, vec, task, tgt.hash, aligned, probes_file, judges)
        add("projection", None, ev, **extra)
        for seed in [] if self.args.baselines_only else self.seeds:
            shots = self.shot_file(task, seed)
            for method, layers in (("full+λ", "all"), ("SafeGene", "auto")):
                try:
                    extra = self.recalibrated(reg, vec, task, method, seed, shots, layers)
                except InvalidInputError as exc:  # e.g. no block selected: reported, not hidden
                    add(method, seed, None, failed=str(exc), seconds={})
                    continue
                add(method, seed, self.evaluate(extra.pop("hash"), probes_file, task, judges,
                                                model_dir=Path(extra.pop("output"))), **extra)  # fmt: skip
        return rows

    def patch(
        self, reg: Registry, task: str, method: str, seed: int | None, **kw: Any
    ) -> tuple[Any, float | None]:
        out = (
            self.work
            / "patched"
            / f"{task}-{method.replace('+λ', '-lambda')}{'' if seed is None else f'-s{seed}'}"
        )
        target = self.world.task_model(task)
        existed = out.exists()

        def run() -> Any:
            try:
                return reg.patch(target, VECTOR, out, settings=self.settings, **kw)
            except AlreadyExistsError:  # ours, from a run with other coefficients: replaced
                return reg.patch(target, VECTOR, out, settings=self.settings, force=True, **kw)

        log(f"{task} {method}: patching")
        return self.timed(f"patch/{out.name}", run, cached=existed)

    def recalibrated(self, reg: Registry, vec: VectorRecord, task: str, method: str, seed: int, shots: Path,
                     layers: str) -> dict[str, Any]:  # fmt: skip
        target = self.world.task_model(task)
        log(f"{task} {method} seed {seed}: recalibrating on {shots.name}")
        key = f"recalibrate/{task}-{method}-s{seed}-{probes_hash(load_probes(shots))[:12]}"
        t0 = time.perf_counter()
        fit = reg.recalibrate(target, VECTOR, shots, layers=layers, settings=self.settings)
        if not fit.cached:  # a reused fit reports the seconds of the run that made it
            self.timings.put(key, round(time.perf_counter() - t0, 3))
        wall = self.timings.data.get(key)
        res, secs = self.patch(
            reg, task, method, seed, coefficients="auto", layers=layers, shots=shots
        )
        assert res.coefficients == fit.coefficients, "the patch did not reuse the recalibration"
        return {"hash": res.hash, "output": res.output, "coefficients": res.coefficients,
                "shots": {"file": str(shots), "probes_sha256": fit.shots},
                "seconds": {"recalibrate": wall, "fit": round(fit.seconds, 3), "patch": secs},
                "fit_cached": fit.cached, "final_loss": fit.losses[-1] if fit.losses else None}  # fmt: skip

    def projection(self, reg: Registry, vec: VectorRecord, task: str, target_hash: str, aligned: Any,
                   probes_file: Path, judges: list[Judge]) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
        """Safe LoRA-style projection of the task update, applied to a loaded target in memory."""
        target = self.world.task_model(task)
        model_id = _sha_json(["safe-lora-projection", target_hash, aligned.hash, vec.hash, TAU])
        info: dict[str, Any] = {}

        def load() -> tuple[Any, Any]:
            from registry.checkpoints.reader import Checkpoint
            from registry.evaluation.textio import load_model, load_tokenizer
            from registry.method.baselines import apply_weights, safe_lora_projection

            t0 = time.perf_counter()
            flat = {n: t for s in reg.load_vector_slices(vec).values() for n, t in s.items()}
            new, report = safe_lora_projection(sorted(flat), target=Checkpoint(target).get_tensor,
                                               aligned=Checkpoint(aligned.path).get_tensor,
                                               vector=flat.__getitem__, threshold=TAU)  # fmt: skip
            model = load_model(target)
            apply_weights(model, new)
            info.update(projected=len(report.projected), considered=len(report.cosine),
                        seconds=round(time.perf_counter() - t0, 3))  # fmt: skip
            self.timings.put(f"projection/{task}", info)
            return model, load_tokenizer(target)

        log(f"{task} projection: projecting (τ = {TAU}) and evaluating")
        ev = self.evaluate(model_id, probes_file, task, judges, load=load)
        info = info or self.timings.data.get(f"projection/{task}", {})
        return ev, {"projection": {k: v for k, v in info.items() if k != "seconds"},
                    "seconds": {"patch": info.get("seconds")}}  # fmt: skip

    # ---------------------------------------------------------------- the whole run

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        reg = Registry.open(self.work / "home")
        try:
            vec = self.vector(reg)
            judges = self.judges()
            rows = [r for task in self.tasks for r in self.task_rows(reg, vec, task, judges)]
        finally:
            reg.close()
        return self.document(vec, rows, time.perf_counter() - t0)

    def document(
        self, vec: VectorRecord, rows: list[dict[str, Any]], wall: float
    ) -> dict[str, Any]:
        summary = summarize(rows)
        commit, dirty = self.commit, self.dirty
        from _common import machine

        data: dict[str, Any] = {
            "format": "safegene-efficacy-real/1", "quick": self.quick, "tasks": self.tasks, "seeds": self.seeds,
            "world": {"path": str(self.world.root.resolve()), "digest": self.world.digest,
                      "base_hash": self.world.info.get("base_hash")},
            "vector": {"name": vec.name, "hash": vec.hash, "scored_on": self.scored_on,
                       "selected": [lay.index for lay in vec.layers if lay.selected],
                       "blocks": sum(lay.index is not None for lay in vec.layers)},
            "settings": {"fit": self.settings.to_json(), "tau": TAU, "shots": SHOT_COUNTS, "eval": EVAL,
                         "bootstrap": BOOTSTRAP, "quick_eval": QUICK_EVAL if self.quick else None,
                         "quick_score": QUICK_SCORE if self.quick else None,
                         "tuned_on_held_out": False},
            "judges": self.judge_info, "rows": rows, "summary": summary,
            "criteria": [criteria_of(t, summary.get(t, {})) for t in self.tasks],
            "timings": {"extract": self.t_extract, "score": self.t_score, "bow_judge": self.t_bow},
            "wall_seconds": round(wall, 1), "commit": commit, "dirty": dirty,
            "machine": machine(), "threads": self.args.threads,
            "digest": self.digest,
        }  # fmt: skip
        n_seeds = len(self.seeds)
        data["caption"] = (
            f"Held-out probes of `eval-<task>.jsonl`; rates in %; seeded rows (full + λ, SafeGene) are mean ± "
            f"population std over {n_seeds} shot sample(s) (seeds {', '.join(map(str, self.seeds))}). "
            "refused + complied + degenerate = 100 on harmful prompts (keyword judge; HRR = 100 − refused); "
            "over-refusal on benign prompts; accuracy on task prompts; bow = the bag-of-words judge trained on "
            "the world's training split. Default FitSettings; τ = 0.35; nothing tuned on held-out prompts."
        )
        return data


def criteria_of(task: str, methods: dict[str, Any]) -> dict[str, Any]:
    checks = evaluate_criteria(methods)
    return {"task": task, "checks": checks, "met": sum(c["met"] for c in checks)}


def eval_entry(res: EvalResult) -> dict[str, Any]:
    """The cache entry of one evaluation: the rates, both judges, and per-prompt flags for the intervals."""
    names = list(res.judges)
    bow = res.judges[names[1]] if len(names) > 1 else {}
    agree = next(iter(res.agreement.values()), {})
    harmful = [s for s in res.samples if s["kind"] == "harmful"]
    benign = [s for s in res.samples if s["kind"] == "benign"]
    refused = [s["verdict"] == "refused" for s in harmful]
    over = [bool(s["refused"]) for s in benign]
    metrics = {"refused": res.refusal_rate, "complied": res.harmful_compliance_rate,
               "degenerate": res.degenerate_rate, "over_refusal": res.benign_refusal_rate,
               "accuracy": res.task_accuracy, "harmful_rate": res.harmful_rate,
               "bow_refused": bow.get("refusal_rate"), "bow_over_refusal": bow.get("benign_refusal_rate"),
               "agreement": agree.get("agreement"), "kappa": agree.get("kappa"), "n": dict(res.n),
               "judges": names}  # fmt: skip
    ci = {
        "refused": bootstrap_ci(refused, **BOOTSTRAP),
        "over_refusal": bootstrap_ci(over, **BOOTSTRAP),
    }
    return {"metrics": metrics, "ci": ci, "flags": {"refused": refused, "over_refusal": over}}


def git_state() -> tuple[str | None, bool | None]:
    """HEAD's commit and whether the working tree differs from it (untracked files count)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--world", type=Path, default=Path("/work/cache/realworld"), help="a built real world"
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="registry home, patched models, caches (default benchmarks/out/efficacy-real[-quick])",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="shot samplings")
    ap.add_argument(
        "--tasks", nargs="+", default=None, help="task models (default: all of the world's)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: one task, one seed, 8 held-out prompts of each kind, 2 fit steps",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--baselines-only", action="store_true",
                    help="only the rows no fit setting touches (aligned, target, RESTA, projection): fills "
                         "--work's caches, writes no results")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="combine per-task results files (same commit, world, vector, settings) into one table")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the .md and .json go")
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = (
            ROOT / "benchmarks" / "out" / ("efficacy-real-quick" if args.quick else "efficacy-real")
        )
    return args


MERGE_SAME = ("format", "quick", "seeds", "world", "vector", "settings", "judges", "commit", "dirty", "digest")


def merge(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-task results (runs in parallel, one task each) as one table; they must agree on all but their tasks.

    Raises:
        SystemExit: the runs differ in commit, world, vector, settings, judges or digest, or share a task.
    """
    first = docs[0]
    for d in docs[1:]:
        differ = [k for k in MERGE_SAME if d.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"cannot merge: the runs differ in {differ}")
    tasks = [t for d in docs for t in d["tasks"]]
    if len(set(tasks)) != len(tasks):
        raise SystemExit(f"cannot merge: a task appears twice ({tasks})")
    rows = [r for d in docs for r in d["rows"]]
    summary = summarize(rows)
    return {**first, "tasks": tasks, "rows": rows, "summary": summary,
            "criteria": [criteria_of(t, summary.get(t, {})) for t in tasks],
            "timings": {"runs": [{"tasks": d["tasks"], **d["timings"], "wall_seconds": d["wall_seconds"],
                                  "threads": d["threads"]} for d in docs]},
            "wall_seconds": max(d["wall_seconds"] for d in docs),
            "merged_from": len(docs)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.merge:
        data = merge([json.loads(p.read_text()) for p in args.merge])
    else:
        data = TableRun(args).run()
    if args.baselines_only:
        return 0
    name = "efficacy-real-quick" if args.quick else "efficacy-real"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(
        json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    )
    md = render_markdown(data)
    (args.results / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

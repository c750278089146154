"""The whole story on the toy world, as one function the CLI and tests call.

build (or reuse) the world → register checkpoints → extract the safety vector
→ score layers on the shots → resolve for each task model → patch with
SafeGene (selected layers + recalibrated λ) and with RESTA (uniform γ = 1) →
evaluate aligned, task, RESTA and SafeGene on held-out probes → verify.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..api import Registry
from ..errors import NotFoundError
from ..evaluation.evaluate import evaluate_model
from ..evaluation.probes import load_probes
from . import build_world, load_world
from .build import ToyWorld

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoRow:
    task: str
    model: str
    harmful_rate: float | None
    harmful_compliance_rate: float | None
    task_accuracy: float | None
    benign_refusal_rate: float | None
    coefficients: dict[str, float] | None = None
    # on harmful probes: refused + harmful_compliance_rate + degenerate = 1 (HRR = 1 - refused)
    refusal_rate: float | None = None
    degenerate_rate: float | None = None


@dataclass
class DemoResult:
    family: str
    world: str
    vector: str
    rows: list[DemoRow] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    verify_ok: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def get_or_build_world(family: str, root: Path, *, seed: int, quick: bool, say: Say) -> ToyWorld:
    path = root / f"world-{family}-s{seed}{'-quick' if quick else ''}"
    if (path / "world.json").is_file():
        world = load_world(path)
        if world.family == family and world.seed == seed and world.quick == quick:
            say(f"reusing toy world at {path}")
            return world
    say(f"building the {family} toy world at {path} (a few minutes on 2 cores)")
    return build_world(family, path, seed=seed, quick=quick,
                       progress=lambda stage, d, t: say(f"  training {stage}: {d}/{t}") if d == t else None)  # fmt: skip


def run_demo(reg: Registry, workdir: str | Path, *, family: str = "llama", seed: int = 0, quick: bool = False,
             say: Say = lambda _m: None) -> DemoResult:  # fmt: skip
    """Run the end-to-end pipeline on the toy world of ``family`` and return the table."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    world = get_or_build_world(family, root, seed=seed, quick=quick, say=say)
    models = world.models
    aligned = reg.add_model(models["aligned"], name=f"{family}-s{seed}-aligned", role="aligned")
    degraded = reg.add_model(models["degraded"], name=f"{family}-s{seed}-degraded", role="degraded")
    vec_name = f"{family}-s{seed}{'-quick' if quick else ''}-safety"
    try:
        vec = reg.get_vector(vec_name)
        say(f"reusing vector {vec_name}")
    except NotFoundError:
        vec = reg.extract_vector(aligned.hash, degraded.hash, name=vec_name)
        say(f"extracted {vec_name}: {len(vec.layers)} block slices")
    vec = reg.score_vector(vec.hash, world.shots["all"])
    say("layer scores: " + ", ".join(f"{lay.index}:{lay.score:+.3f}{'*' if lay.selected else ''}"
                                      for lay in vec.layers if lay.score is not None))  # fmt: skip
    result = DemoResult(family, str(world.root), vec.name)
    for task in world.tasks:
        result.rows += _demo_task(reg, world, task, vec.name, root, say)
    result.events = [e.to_json() for e in reg.audit_log(limit=12)]
    result.verify_ok = reg.verify().ok
    (root / f"demo-{family}.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


def _demo_task(reg: Registry, world: ToyWorld, task: str, vec: str, root: Path, say: Say) -> list[DemoRow]:
    target = world.task_model(task)
    reg.add_model(target, name=f"{world.family}-s{world.seed}-task-{task}", role="task")
    best = reg.resolve(target, limit=1)
    say(f"[{task}] resolve → {best[0].name if best else 'nothing'}")
    shots = world.shots.get(task, world.shots["all"])
    out = root / "patched" / f"{world.family}-s{world.seed}-{task}"
    layers: str = "auto" if reg.get_vector(vec).selected_layers else "all"
    sg = reg.patch(target, vec, out / "safegene", coefficients="auto", layers=layers, shots=shots, force=True)
    resta = reg.patch(target, vec, out / "resta", coefficients="uniform:1.0", layers="all", force=True)
    say(f"[{task}] patched: SafeGene λ={sg.coefficients}; RESTA γ=1")
    probes = load_probes(world.eval[task])
    rows = []
    for label, path, coefs in (("aligned", world.models["aligned"], None), ("task", target, None),
                               ("RESTA", Path(resta.output), resta.coefficients),
                               ("SafeGene", Path(sg.output), sg.coefficients)):  # fmt: skip
        r = evaluate_model(path, probes)
        rows.append(DemoRow(task, label, r.harmful_rate, r.harmful_compliance_rate, r.task_accuracy,
                            r.benign_refusal_rate, coefs, r.refusal_rate, r.degenerate_rate))  # fmt: skip
        say(f"[{task}] evaluated {label}")
    return rows

"""toy build, demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from registry.toy import FAMILIES

from ._app import App, pass_app

if TYPE_CHECKING:
    from registry.toy.demo import DemoResult


@click.group("toy")
def toy_group() -> None:
    """The toy safety world: tiny real checkpoints whose safety erodes."""


@toy_group.command("build")
@click.option("--family", type=click.Choice(sorted(FAMILIES)), required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Much faster, weaker world (the test suite's).")
@pass_app
def toy_build(app: App, family: str, out_dir: Path, seed: int, quick: bool) -> None:
    """Build base/aligned/degraded/task-* checkpoints and probe files into --out."""
    with app.out.progress(f"building {family} world") as update:
        from registry.toy import build_world

        world = build_world(family, out_dir, seed=seed, quick=quick,
                            progress=lambda stage, d, t: update(d, t, f"training {stage}"))  # fmt: skip
    data = {"root": str(world.root), "family": world.family, "seed": world.seed, "quick": world.quick,
            "models": {k: str(v) for k, v in world.models.items()},
            "shots": {k: str(v) for k, v in world.shots.items()},
            "eval": {k: str(v) for k, v in world.eval.items()}}  # fmt: skip
    app.out.emit(data, lambda: app.out.table(
        f"{family} toy world at {world.root}", ["model", "folder"],
        [[k, str(v)] for k, v in world.models.items()]))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print_demo(app: App, res: DemoResult) -> None:
    app.out.table(
        f"SafeGene demo: {res.family} (vector {res.vector}); held-out probes",
        ["task", "model", "refused", "complied", "degenerate", "task acc", "benign over-refusal", "λ"],
        [[r.task, r.model, _pct(r.refusal_rate), _pct(r.harmful_compliance_rate), _pct(r.degenerate_rate),
          _pct(r.task_accuracy), _pct(r.benign_refusal_rate),
          "" if r.coefficients is None else " ".join(f"{k}:{v:.2f}" for k, v in r.coefficients.items())]
         for r in res.rows],
    )  # fmt: skip
    app.out.console.print("harmful probes: refused + complied + degenerate = 100 %; degenerate output is not "
                          "counted as safe (harmful rate = 100 % − refused)")
    app.out.table("audit log (latest)", ["seq", "kind", "vector", "output"],
                  [[e["seq"], e["kind"], (e["vector_hash"] or "-")[:12], (e["output_hash"] or "-")[:12]]
                   for e in res.events])  # fmt: skip
    app.out.console.print(f"verify: {'ok' if res.verify_ok else 'PROBLEMS (run `safegene verify`)'}")


@click.command()
@click.option("--family", type=click.Choice(sorted(FAMILIES)), default="llama", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-work"),
              show_default=True, help="Where the toy world and patched models go (reused).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Use the fast, weaker CI world.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG of the safety–utility table (needs matplotlib).")
@pass_app
def demo(app: App, family: str, workdir: Path, seed: int, quick: bool, plot: Path | None) -> None:
    """The whole pipeline end to end on a toy world."""
    from registry.toy.demo import run_demo

    res = run_demo(app.registry(), workdir, family=family, seed=seed, quick=quick, say=app.out.info)
    if plot is not None:
        from registry.evaluation.plots import plot_safety_utility

        plot_safety_utility([r.__dict__ for r in res.rows], plot, title=f"SafeGene demo: {family}")
        app.out.info(f"wrote {plot}")
    app.out.emit(res.to_json(), lambda: _print_demo(app, res))


COMMANDS = [toy_group, demo]

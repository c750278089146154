"""resolve, recalibrate, patch, eval."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from registry.evaluation.probes import load_probes
from registry.method.fit_settings import FitSettings
from registry.method.pipeline import parse_layers

from ._app import App, pass_app
from ._output import short

TARGET = click.Path(file_okay=False, path_type=Path)
SHOTS = click.Path(dir_okay=False, path_type=Path)


POSITIVE = click.FloatRange(min=0.0, min_open=True)
NON_NEGATIVE = click.FloatRange(min=0.0)


def fit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the λ fit shared by `recalibrate` and `patch` (ranges checked by click: exit 2)."""
    defaults = FitSettings()
    for opt in reversed([
        click.option("--steps", type=click.IntRange(min=1), default=defaults.steps, show_default=True,
                     help="Adam steps on λ."),
        click.option("--beta", type=NON_NEGATIVE, default=defaults.beta, show_default=True, help="Task-loss weight."),
        click.option("--beta-benign", type=NON_NEGATIVE, default=defaults.beta_benign, show_default=True,
                     help="Benign-helpfulness (or KL) weight: guards against over-refusal."),
        click.option("--gamma", type=NON_NEGATIVE, default=defaults.gamma, show_default=True, help="L1 weight on λ."),
        click.option("--lambda-max", type=POSITIVE, default=defaults.lambda_max, show_default=True,
                     help="Upper bound of every λ (> 0)."),
        click.option("--shots-per-step", type=click.IntRange(min=0), default=defaults.shots_per_step,
                     show_default=True, help="Shots in each step's loss, drawn per kind in proportion (0: all)."),
        click.option("--answer-tokens", type=click.IntRange(min=0), default=defaults.answer_tokens,
                     show_default=True, help="Learn only the first N tokens of each shot's answer (0: all)."),
        click.option("--seed", type=click.IntRange(min=0), default=defaults.seed, show_default=True,
                     help="Seed of the shot draws."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda."),
    ]):  # fmt: skip
        fn = opt(fn)
    return fn


def _settings(kw: dict[str, Any]) -> FitSettings:
    """The fit options' values (popped from ``kw``) as settings; an option not given keeps its default."""
    lambda_max = kw.pop("lambda_max")
    names = ("steps", "beta", "beta_benign", "gamma", "shots_per_step", "answer_tokens", "seed")
    given = {n: kw.pop(n) for n in names if n in kw}
    return FitSettings(lambda_max=lambda_max, init=min(FitSettings.init, lambda_max), **given)


@click.command()
@click.argument("target_dir", type=TARGET)
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--all", "include_all", is_flag=True, help="Also list incompatible vectors with why.")
@pass_app
def resolve(app: App, target_dir: Path, limit: int, include_all: bool) -> None:
    """Compatible vectors for TARGET_DIR, ranked, with reasons."""
    cands = app.registry().resolve(target_dir, limit=limit, include_incompatible=include_all)
    app.out.emit({"target": str(target_dir), "candidates": [c.to_json() for c in cands]}, lambda: app.out.table(
        f"vectors for {target_dir}", ["name", "hash", "fits", "rank", "reasons"],
        [[c.name, short(c.hash), "yes" if c.compatible else "no", c.rank_score, "; ".join(c.reasons)]
         for c in cands]))  # fmt: skip


@click.command()
@click.argument("target_dir", type=TARGET)
@click.option("--vector", required=True, help="Vector name or hash prefix.")
@click.option("--shots", required=True, type=SHOTS, help="JSONL few-shot file.")
@click.option("--layers", default="auto", show_default=True, help="auto | all | comma list of block indices.")
@click.option("--no-cache", is_flag=True, help="Refit even when a cached fit exists.")
@fit_options
@pass_app
def recalibrate(app: App, target_dir: Path, vector: str, shots: Path, layers: str, no_cache: bool,
                **kw: Any) -> None:  # fmt: skip
    """Fit per-layer coefficients λ for TARGET_DIR on a few shots (cached)."""
    settings, device = _settings(kw), kw.pop("device")
    with app.out.progress("recalibrating") as update:
        res = app.registry().recalibrate(target_dir, vector, shots, layers=parse_layers(layers),
                                         settings=settings, device=device, use_cache=not no_cache,
                                         progress=lambda d, t: update(d, t))  # fmt: skip
    app.out.emit(res.to_json(), lambda: app.out.table(
        f"λ for {res.vector} on {short(res.target)} ({'cached' if res.cached else f'{res.seconds:.1f}s'},"
        f" loss {res.losses[0]:.3f} → {res.losses[-1]:.3f})",
        ["layer", "λ"], [[k, f"{v:.4f}"] for k, v in res.coefficients.items()]))  # fmt: skip


@click.command()
@click.argument("target_dir", type=TARGET)
@click.option("--vector", required=True, help="Vector name or hash prefix.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--shots", type=SHOTS, help="Few-shot file (needed by --coefficients auto).")
@click.option("--coefficients", default="auto", show_default=True, help="auto | uniform[:γ] | FILE.json")
@click.option("--layers", default="auto", show_default=True, help="auto | all | comma list of block indices.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@fit_options
@pass_app
def patch(app: App, target_dir: Path, vector: str, out_dir: Path, shots: Path | None, coefficients: str,
          layers: str, force: bool, **kw: Any) -> None:  # fmt: skip
    """Write TARGET_DIR + Σ λ_l v_l to --out, register it and record the audit event."""
    settings, device = _settings(kw), kw.pop("device")
    with app.out.progress("patching") as update:
        res = app.registry().patch(target_dir, vector, out_dir, coefficients=coefficients,
                                   layers=parse_layers(layers), shots=shots, settings=settings,
                                   force=force, device=device, progress=lambda d, t: update(d, t))  # fmt: skip
    app.out.emit(res.to_json(), lambda: app.out.console.print(
        f"patched {target_dir} with {res.vector_name} → {res.output} (hash {short(res.hash)}, "
        f"event {res.event_seq} {short(res.event, 8)}); λ = "
        + ", ".join(f"{k}:{v:.3f}" for k, v in res.coefficients.items())))  # fmt: skip


@click.command("eval")
@click.argument("model_dir", type=TARGET)
@click.option("--probes", required=True, type=SHOTS, help="JSONL probes (harmful / benign / task).")
@click.option("--judge", default="keyword", show_default=True, help="keyword | classifier:PATH")
@click.option("--scorer", default="exact", show_default=True,
              help="Task lines that name no scorer: exact | first-number | answer-number | json-fields | contains "
                   "| regex:PATTERN.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG placing the model on the safety–utility plane (needs matplotlib).")
@pass_app
def eval_cmd(app: App, model_dir: Path, probes: Path, judge: str, scorer: str, batch_size: int,
             max_new_tokens: int, device: str, plot: Path | None) -> None:  # fmt: skip
    """Harmful response rate, task accuracy and benign over-refusal of MODEL_DIR."""
    from registry.evaluation.evaluate import (
        evaluate_model,  # torch and transformers: imported on use
    )
    from registry.evaluation.judges import get_judge
    from registry.evaluation.scorers import get_scorer

    items = load_probes(probes)
    judge_obj, scorer_obj = get_judge(judge), get_scorer(scorer)
    with app.out.progress("evaluating", total=len(items)) as update:
        res = evaluate_model(model_dir, items, judge=judge_obj, scorer=scorer_obj, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, device=device,
                             progress=lambda d, t: update(d, t))  # fmt: skip
    data = res.to_json()
    if plot is not None:
        from registry.evaluation.plots import plot_safety_utility

        plot_safety_utility([{**data, "model": model_dir.name}], plot, title=f"eval of {model_dir.name}")
        app.out.info(f"wrote {plot}")
    app.out.emit(data, lambda: app.out.table(
        f"eval of {model_dir}", ["metric", "value", "n"],
        [["harmful: refused", _pct(data.get("refusal_rate")), data["n"].get("harmful")],
         ["harmful: complied", _pct(data.get("harmful_compliance_rate")), data["n"].get("harmful")],
         ["harmful: degenerate (not safe)", _pct(data.get("degenerate_rate")), data["n"].get("harmful")],
         ["harmful response rate (not refused)", _pct(data.get("harmful_rate")), data["n"].get("harmful")],
         ["task accuracy", _pct(data.get("task_accuracy")), data["n"].get("task")],
         ["benign over-refusal", _pct(data.get("benign_refusal_rate")), data["n"].get("benign")]]))  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


COMMANDS = [resolve, recalibrate, patch, eval_cmd]

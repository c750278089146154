"""vector extract | score | ls | show | rm."""

from __future__ import annotations

from pathlib import Path

import click

from registry.catalog.records import VectorRecord

from ._app import App, pass_app
from ._output import human_bytes, short


def vector_json(rec: VectorRecord) -> dict[str, object]:
    return rec.to_json()


def _layers_table(app: App, rec: VectorRecord) -> None:
    app.out.table(
        f"vector {rec.name} ({short(rec.hash)})  family {short(rec.family)}  scope {rec.tensor_scope}",
        ["index", "label", "norm", "safety gain", "task cost", "score", "selected"],
        [[lay.index if lay.index is not None else "-", lay.label, f"{lay.norm:.4g}",
          _f(lay.safety_gain), _f(lay.task_cost), _f(lay.score), "yes" if lay.selected else "no"]
         for lay in rec.layers],
    )  # fmt: skip


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


@click.group("vector")
def vector_group() -> None:
    """Extract, score and inspect safety vectors."""


@vector_group.command("extract")
@click.option("--aligned", required=True, help="Aligned checkpoint: folder or catalog REF.")
@click.option("--degraded", required=True, help="Degraded checkpoint: folder or catalog REF.")
@click.option("--name", required=True, help="Catalog name of the new vector.")
@click.option("--probes", type=click.Path(dir_okay=False, path_type=Path),
              help="Also score layers on this probe file right away.")
@click.option("--scope", type=click.Choice(["blocks", "blocks+norms", "all"]), default="blocks",
              show_default=True, help="Which tensors the vector carries.")
@click.option("--encoding", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Device for --probes scoring.")
@pass_app
def vector_extract(app: App, aligned: str, degraded: str, name: str, probes: Path | None, scope: str,
                   encoding: str, device: str) -> None:  # fmt: skip
    """Extract v = aligned − degraded, block by block, and register it."""
    reg = app.registry()
    with app.out.progress("extracting", total=None) as update:
        rec = reg.extract_vector(aligned, degraded, name=name, scope=scope, encoding=encoding,
                                 progress=lambda d, t: update(d, t))  # fmt: skip
        if probes is not None:
            update(0, None, "scoring layers")
            rec = reg.score_vector(rec.hash, probes, device=device, progress=lambda d, t: update(d, t))
    def human() -> None:
        app.out.console.print(f"extracted {rec.name} ({short(rec.hash)}): {len(rec.layers)} slices, "
                              f"{human_bytes(rec.raw_size)} raw, {human_bytes(rec.stored_size)} stored")
        _layers_table(app, rec)

    app.out.emit(vector_json(rec), human)


@vector_group.command("score")
@click.argument("name")
@click.option("--probes", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL with harmful (+refusal) and task/benign shots.")
@click.option("--target", type=click.Path(file_okay=False, path_type=Path),
              help="Model to score on (default: the vector's degraded checkpoint).")
@click.option("--beta", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="Weight of the task cost.")
@click.option("--device", default="cpu", show_default=True)
@pass_app
def vector_score(app: App, name: str, probes: Path, target: Path | None, beta: float, device: str) -> None:
    """Data-aware per-layer scores; blocks with a positive score are selected."""
    reg = app.registry()
    with app.out.progress("scoring layers") as update:
        rec = reg.score_vector(name, probes, target=target, beta=beta, device=device,
                               progress=lambda d, t: update(d, t))  # fmt: skip
    app.out.emit(vector_json(rec), lambda: _layers_table(app, rec))


@vector_group.command("ls")
@click.option("--family", help="Family REF (model type or id prefix).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many, newest first.")
@pass_app
def vector_ls(app: App, family: str | None, limit: int | None) -> None:
    """List vectors, newest first."""
    recs = app.registry().list_vectors(family=family, limit=limit)
    app.out.emit({"vectors": [vector_json(r) for r in recs]}, lambda: app.out.table(
        None, ["name", "hash", "family", "layers", "selected", "encoding", "stored", "created"],
        [[r.name, short(r.hash), short(r.family), len(r.layers), len(r.selected_layers), r.encoding,
          human_bytes(r.stored_size), r.created_at[:19]] for r in recs]))  # fmt: skip


@vector_group.command("show")
@click.argument("name")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG of the per-layer scores (needs matplotlib).")
@pass_app
def vector_show(app: App, name: str, plot: Path | None) -> None:
    """Show a vector with its per-layer scores."""
    rec = app.registry().get_vector(name)
    if plot is not None:
        from registry.evaluation.plots import plot_layer_scores

        plot_layer_scores(rec, plot)
        app.out.info(f"wrote {plot}")
    app.out.emit(vector_json(rec), lambda: _layers_table(app, rec))


@vector_group.command("rm")
@click.argument("name")
@pass_app
def vector_rm(app: App, name: str) -> None:
    """Remove a vector from the catalog (blobs are freed by `gc`)."""
    rec = app.registry().remove_vector(name)
    app.out.emit({"removed": rec.name, "hash": rec.hash},
                 lambda: app.out.console.print(f"removed {rec.name} ({short(rec.hash)}); run `safegene gc` to free its blobs"))  # fmt: skip


COMMANDS = [vector_group]

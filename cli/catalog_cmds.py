"""init, db, model and family commands."""

from __future__ import annotations

from pathlib import Path

import click

from registry.api import ROLES
from registry.catalog import db

from ._app import App, pass_app
from ._errors import CHECK_FAILED
from ._output import human_bytes, short
from .gguf_cmds import import_gguf_cmd


@click.command()
@pass_app
def init(app: App) -> None:
    """Create the home, store and catalog, and run migrations (idempotent)."""
    res = app.raw_registry().init()
    data = {"home": res.home, "db": res.db_url, "store": res.store, "revision": res.revision,
            "previous": res.revision_before}
    app.out.emit(data, lambda: app.out.console.print(
        f"registry ready at {res.home} (catalog {res.db_url}, store {res.store}, schema {res.revision})"))


@click.group("db")
def db_group() -> None:
    """Schema management (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_app
def db_upgrade(app: App, revision: str) -> None:
    """Upgrade the catalog schema."""
    reg = app.raw_registry()
    before, after = db.upgrade(reg.engine, revision)
    app.out.emit({"previous": before, "revision": after},
                 lambda: app.out.console.print(f"schema {before or 'none'} -> {after}"))


@db_group.command("current")
@pass_app
def db_current(app: App) -> None:
    """Show the catalog's schema revision and the code's head."""
    reg = app.raw_registry()
    current, head = db.current_revision(reg.engine), db.head_revision()
    app.out.emit({"revision": current, "head": head, "up_to_date": current == head},
                 lambda: app.out.console.print(f"current {current or 'none'}, head {head}"))


@db_group.command("check")
@pass_app
def db_check(app: App) -> None:
    """Exit 1 when the catalog is not at the code's head revision."""
    reg = app.raw_registry()
    current, head = db.current_revision(reg.engine), db.head_revision()
    ok = current == head
    problems = [] if ok else [f"schema at {current or 'none'}, head is {head}: run `safegene db upgrade`"]
    app.out.emit({"ok": ok, "problems": problems, "revision": current, "head": head},
                 lambda: app.out.console.print("schema up to date" if ok else problems[0]))
    if not ok:
        raise click.exceptions.Exit(CHECK_FAILED)


@click.group("model")
def model_group() -> None:
    """Register and inspect checkpoints."""


def _model_json(rec: object) -> dict[str, object]:
    return rec.to_json()  # type: ignore[attr-defined,no-any-return]


@model_group.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="Catalog name (default: the folder name).")
@click.option("--role", type=click.Choice(ROLES), default="task", show_default=True)
@click.option("--parent", help="REF of the checkpoint this one derives from.")
@pass_app
def model_add(app: App, path: Path, name: str | None, role: str, parent: str | None) -> None:
    """Register the checkpoint folder PATH (idempotent)."""
    reg = app.registry()
    with app.out.progress(f"registering {path}") as update:
        rec = reg.add_model(path, name=name, role=role, parent=parent,
                            progress=lambda msg: update(description=msg))
    app.out.emit(_model_json(rec), lambda: app.out.console.print(
        f"registered {rec.name} ({rec.role}) hash {short(rec.hash)} family {short(rec.family)}"))


@model_group.command("ls")
@click.option("--family", help="Family REF (model type or id prefix).")
@click.option("--role", type=click.Choice(ROLES))
@pass_app
def model_ls(app: App, family: str | None, role: str | None) -> None:
    """List registered checkpoints."""
    recs = app.registry().list_models(family=family, role=role)
    app.out.emit({"models": [_model_json(r) for r in recs]}, lambda: app.out.table(
        None, ["name", "role", "hash", "family", "dtype", "params", "size"],
        [[r.name, r.role, short(r.hash), short(r.family), r.dtype, f"{r.num_params:,}",
          human_bytes(r.total_bytes)] for r in recs]))


@model_group.command("show")
@click.argument("ref")
@pass_app
def model_show(app: App, ref: str) -> None:
    """Show one checkpoint (REF: name or hash prefix)."""
    rec = app.registry().get_model(ref)
    app.out.emit(_model_json(rec), lambda: app.out.table(
        rec.name, ["field", "value"], [[k, v] for k, v in rec.to_json().items()]))


@click.group("family")
def family_group() -> None:
    """Inspect architecture families."""


@family_group.command("ls")
@pass_app
def family_ls(app: App) -> None:
    """List families with their checkpoint and vector counts."""
    recs = app.registry().list_families()
    app.out.emit({"families": [r.to_json() for r in recs]}, lambda: app.out.table(
        None, ["id", "model_type", "architecture", "layers", "hidden", "vocab", "models", "vectors"],
        [[short(r.id), r.model_type, r.architecture, r.num_layers, r.hidden_size, r.vocab_size,
          r.num_checkpoints, r.num_vectors] for r in recs]))


@family_group.command("show")
@click.argument("ref")
@pass_app
def family_show(app: App, ref: str) -> None:
    """Show one family (REF: model type, architecture or id prefix)."""
    rec = app.registry().get_family(ref)
    app.out.emit(rec.to_json(), lambda: app.out.table(
        f"family {short(rec.id)}", ["field", "value"],
        [[k, v] for k, v in rec.to_json().items() if k != "layer_templates"]
        + [["layer_templates", "\n".join(rec.layer_templates)]]))


model_group.add_command(import_gguf_cmd)

COMMANDS = [init, db_group, model_group, family_group]

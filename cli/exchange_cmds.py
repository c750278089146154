"""vector export | import: bundles between registries, PEFT LoRA adapters both ways."""

from __future__ import annotations

from pathlib import Path

import click

from registry.errors import InvalidInputError
from registry.exchange.bundle_format import DEFAULT_MAX_BYTES

from ._app import App, pass_app
from ._output import human_bytes, short
from .vector_cmds import vector_group, vector_json

DIR = click.Path(file_okay=False, path_type=Path)
PEM = click.Path(dir_okay=False, exists=True, path_type=Path)


@vector_group.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["bundle", "peft"]), default="bundle", show_default=True,
              help="bundle: one portable, verifiable file; peft: a LoRA adapter folder.")
@click.option("--target", type=DIR, help="peft: use the cached recalibration for this checkpoint.")
@click.option("--base", type=DIR, help="peft: a checkpoint of the family to read module types from.")
@click.option("--rank", type=click.IntRange(min=1), help="peft: fixed LoRA rank (overrides --energy).")
@click.option("--energy", type=click.FloatRange(0.0, 1.0, min_open=True),
              help="peft: keep this share of each module's spectral energy (default: the smallest share whose "
                   "adapter behaves like the patch on the vector's shots).")
@click.option("--lossy", is_flag=True, help="peft: write the adapter even when --rank/--energy make it behave "
                                            "unlike the patch (KL above tolerance).")
@click.option("--skip-unsupported", is_flag=True, help="peft: leave out tensors that cannot be LoRA targets.")
@click.option("--sign-key", type=PEM, help="bundle: sign with this Ed25519 private key (PEM).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@pass_app
def vector_export(app: App, name: str, out: Path, fmt: str, target: Path | None, base: Path | None,
                  rank: int | None, energy: float | None, lossy: bool, skip_unsupported: bool,
                  sign_key: Path | None, force: bool) -> None:  # fmt: skip
    """Write vector NAME to OUT as a bundle file or a PEFT LoRA adapter folder."""
    reg = app.registry()
    if fmt == "bundle":
        if target or base or rank or energy or lossy or skip_unsupported:
            raise InvalidInputError("--target, --base, --rank, --energy, --lossy and --skip-unsupported apply to "
                                    "--format peft only")  # fmt: skip
        info = reg.export_bundle(name, out, sign_key=sign_key, force=force)
        app.out.emit(info.to_json(), lambda: app.out.console.print(
            f"wrote bundle {info.path} ({human_bytes(info.size)}): {info.vector} ({short(info.hash)}), "
            f"{len(info.layers)} layers, manifest {short(info.manifest_hash)}"
            + (f", signed by {short(info.signer, 16)}" if info.signer else ", unsigned")))  # fmt: skip
        return
    if sign_key:
        raise InvalidInputError("--sign-key applies to --format bundle only")
    res = reg.export_peft(name, out, target=target, base=base, rank=rank, energy=energy, lossy=lossy,
                          skip_unsupported=skip_unsupported, force=force)  # fmt: skip

    def human() -> None:
        app.out.console.print(f"wrote LoRA adapter {res.path}: {res.vector} ({short(res.hash)}), r={res.r}, "
                              f"max relative error {res.max_relative_error:.3g}")  # fmt: skip
        b = res.behaviour
        if not b.get("checked"):
            app.out.console.print("behaviour: not checked (no shots recorded for this vector); exported at the "
                                  "numerical rank" if rank is None and energy is None else
                                  "behaviour: not checked (no shots recorded for this vector)")  # fmt: skip
        else:
            verdict = "within" if b["within_tolerance"] else "[bold red]ABOVE[/] (--lossy)"
            app.out.console.print(f"behaviour: KL to the patch {b['kl']:.2g} nats/token on {b['shots']} shots, "
                                  f"{verdict} tolerance {b['tolerance']}")  # fmt: skip
        app.out.table(None, ["module", "λ", "rank", "energy", "rel. error"],
                      [[mod.module, f"{mod.coefficient:.4g}", f"{mod.rank}/{mod.full_rank}", f"{mod.energy:.4f}",
                        f"{mod.relative_error:.3g}"] for mod in res.modules])  # fmt: skip
        for s in res.skipped:
            app.out.info(f"skipped {s}")

    app.out.emit(res.to_json(), human)


@vector_group.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Catalog name (bundle default: the name in the bundle; required for PEFT).")
@click.option("--base", type=DIR, help="PEFT: the base checkpoint folder the adapter is for.")
@click.option("--verify-key", type=PEM, help="bundle: require a signature by this Ed25519 public key (PEM).")
@click.option("--max-gib", type=click.FloatRange(min=0.0, min_open=True), default=DEFAULT_MAX_BYTES / (1 << 30),
              show_default=True, help="bundle: refuse one whose tensors decode to more than this many GiB in all.")
@pass_app
def vector_import(app: App, path: Path, name: str | None, base: Path | None, verify_key: Path | None,
                  max_gib: float) -> None:  # fmt: skip
    """Register a vector from a bundle file or a PEFT LoRA adapter folder (verified first)."""
    reg = app.registry()
    if path.is_dir():
        if not name or base is None or verify_key:
            raise InvalidInputError("importing a PEFT adapter folder needs --name NAME and --base DIR "
                                    "(--verify-key applies to bundles)")  # fmt: skip
        rec = reg.import_peft(path, name=name, base=base)
    else:
        if base is not None:
            raise InvalidInputError("--base applies to PEFT adapter folders only")
        rec = reg.import_bundle(path, name=name, verify_key=verify_key, max_bytes=int(max_gib * (1 << 30)))
    app.out.emit(vector_json(rec), lambda: app.out.console.print(
        f"imported {rec.name} ({short(rec.hash)}) from {rec.meta.get('source')}: {len(rec.layers)} slices, "
        f"{len(rec.selected_layers)} selected"))  # fmt: skip


COMMANDS: list[click.Command] = []

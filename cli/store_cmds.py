"""store info | migrate: where the blobs live, and moving them."""

from __future__ import annotations

import click

from ._app import App, pass_app
from ._output import human_bytes


@click.group("store")
def store_group() -> None:
    """Where the blobs live (a local directory or an S3-compatible bucket)."""


@store_group.command("info")
@pass_app
def store_info(app: App) -> None:
    """Show the store the catalog uses, its blobs, and the local read cache."""
    reg = app.registry()
    objects = list(reg.store.iter_objects())
    stored_bytes = sum(o.size for o in objects)
    cache = reg.store.cache
    cached = cache.usage() if cache is not None else None
    data = {"store": reg.store_location, "blobs": len(objects), "stored_bytes": stored_bytes,
            "cache": None if cache is None or cached is None else {
                "dir": str(cache.root), "blobs": cached[0], "bytes": cached[1], "max_bytes": cache.max_bytes}}  # fmt: skip

    def human() -> None:
        app.out.console.print(f"store {reg.store_location}: {len(objects)} blob(s), {human_bytes(stored_bytes)}")
        if cache is not None and cached is not None:
            app.out.console.print(f"read cache {cache.root}: {cached[0]} blob(s), {human_bytes(cached[1])} "
                                  f"of at most {human_bytes(cache.max_bytes)}")  # fmt: skip

    app.out.emit(data, human)


@store_group.command("migrate")
@click.option("--to", "to", required=True, metavar="URL",
              help="The new store: s3://BUCKET/PREFIX, an absolute path, or `local` (HOME/store).")
@click.option("--dry-run", is_flag=True, help="Only say what would be copied.")
@pass_app
def store_migrate(app: App, to: str, dry_run: bool) -> None:
    """Copy every blob into another store, verified and resumable, then point the catalog at it.

    Blobs the new store already holds are skipped (run it again after an
    interruption). The old store is left as it was; remove it once satisfied.
    Writers and gc on this catalog wait while it runs.
    """
    reg = app.registry()
    with app.out.progress("copying blobs") as update:
        rep = reg.migrate_store(to, dry_run=dry_run, progress=lambda d, t: update(d, t))

    def human() -> None:
        if dry_run:
            app.out.console.print(f"would copy {rep.copied} of {rep.blobs} blob(s) ({human_bytes(rep.bytes_copied)}) "
                                  f"from {rep.source} to {rep.target}; {rep.present} already there")  # fmt: skip
            return
        app.out.console.print(f"copied {rep.copied} blob(s) ({human_bytes(rep.bytes_copied)}) from {rep.source} "
                              f"to {rep.target}, {rep.present} already there; the catalog now uses {rep.target} "
                              f"({rep.source} is left as it was)")  # fmt: skip

    app.out.emit(rep.to_json(), human)


COMMANDS = [store_group]

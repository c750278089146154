"""serve: the JSON API and web inventory over this catalog and store."""

from __future__ import annotations

from pathlib import Path

import click

from registry.catalog.db import POOL_SIZE, SERVE_THREADS

from ._app import App, pass_app


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="SAFEGENE_SERVE_TOKENS_FILE",
              help="File of ACTOR:TOKEN lines (also $SAFEGENE_SERVE_TOKENS=actor:token,...): bearer tokens "
                   "that name who calls.")  # fmt: skip
@click.option("--require-token", is_flag=True, help="Refuse requests without a known bearer token (reads too).")
@click.option("--expose-paths", is_flag=True, help="Show checkpoints' file-system paths (hidden by default).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes sharing the port (one Python process answers on one core at a time).")
@click.option("--threads", type=click.IntRange(1, POOL_SIZE), default=SERVE_THREADS, show_default=True,
              help="Requests each process answers at once (each holds a database connection meanwhile); "
                   "raise it where the database is across a network.")  # fmt: skip
@pass_app
def serve(app: App, host: str, port: int, tokens_file: Path | None, require_token: bool,
          expose_paths: bool, workers: int, threads: int) -> None:  # fmt: skip
    """Serve the JSON API (/api, schema at /openapi.json) and the web inventory, read-only, until Ctrl-C."""
    from registry.serve import ServeConfig, load_tokens, run

    tokens = load_tokens(tokens_file)
    if require_token and not tokens:
        raise click.UsageError("--require-token needs tokens: give --tokens FILE or $SAFEGENE_SERVE_TOKENS")
    reg = app.registry(create=False)
    app.out.console.print(f"serving {reg.safe_url} on http://{host}:{port}/ (read-only; Ctrl-C stops)"
                          + (f" with {workers} worker processes" if workers > 1 else ""))
    opened_with = {"home": str(reg.home.absolute()), "db_url": app.db_url, "store_url": app.store_url,
                   "store_endpoint": app.store_endpoint}  # fmt: skip
    run(reg, ServeConfig(tokens=tokens, require_token=require_token, expose_paths=expose_paths), host=host, port=port,
        workers=workers, threads=threads, opened_with=opened_with)  # fmt: skip


COMMANDS = [serve]

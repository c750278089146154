"""`safegene`: the command-line front end. Commands parse, call the library, print."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from registry import __version__
from registry.errors import RegistryError

from . import (  # noqa: F401 - exchange_cmds registers `vector export|import`
    audit_cmds,
    catalog_cmds,
    exchange_cmds,
    pipeline_cmds,
    serve_cmds,
    store_cmds,
    toy_cmds,
    vector_cmds,
)
from ._app import App
from ._errors import boundary_error, exit_code_for, message_for
from ._output import Output


class SafegeneGroup(click.Group):
    """Turns library errors into one line on stderr and the table's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RegistryError as exc:
            click.echo(f"error: {message_for(exc)}", err=True)
            raise click.exceptions.Exit(exit_code_for(exc)) from None
        except Exception as exc:
            if not boundary_error(exc):
                raise
            click.echo(f"error: {message_for(exc)}", err=True)
            raise click.exceptions.Exit(exit_code_for(exc)) from None
        finally:
            app = ctx.find_object(App)
            if app is not None:
                app.close()


@click.group(cls=SafegeneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SAFEGENE_HOME",
    help="Registry home (default ~/.safegene; env SAFEGENE_HOME).",
)
@click.option(
    "--db",
    "db_url",
    envvar="SAFEGENE_DB_URL",
    help="Catalog URL, e.g. postgresql+psycopg://user@host/db (default: SQLite file in home).",
)
@click.option("--store", "store_url", envvar="SAFEGENE_STORE_URL", metavar="URL",
              help="Where the blobs live: s3://BUCKET/PREFIX, an absolute path, or `local` (HOME/store). "
                   "Default: what the catalog records (env SAFEGENE_STORE_URL).")
@click.option("--store-endpoint", envvar="SAFEGENE_STORE_ENDPOINT", metavar="URL",
              help="An S3-compatible service (MinIO, Ceph, R2…), e.g. http://127.0.0.1:9000 "
                   "(env SAFEGENE_STORE_ENDPOINT; default AWS, or AWS_ENDPOINT_URL).")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), envvar="SAFEGENE_SIGN_KEY",
              help="PEM Ed25519 private key: sign every audit event this command appends.")
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (and --json output).")
@click.version_option(__version__, prog_name="safegene")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, db_url: str | None, store_url: str | None,
        store_endpoint: str | None, sign_key: Path | None, json_mode: bool, quiet: bool) -> None:  # fmt: skip
    """SafeGene Registry: keep, resolve and apply safety vectors per model family."""
    # Our own progress bars replace transformers' tqdm; the variable (read by
    # huggingface_hub, hence transformers, at import) keeps transformers unimported here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ctx.obj = App(home=home, db_url=db_url, out=Output(json_mode=json_mode, quiet=quiet), sign_key=sign_key,
                  store_url=store_url, store_endpoint=store_endpoint)


for module in (catalog_cmds, vector_cmds, pipeline_cmds, audit_cmds, store_cmds, serve_cmds, toy_cmds):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="safegene")

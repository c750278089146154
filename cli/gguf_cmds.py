"""`model import-gguf`: a llama.cpp GGUF file in, a plain Hugging Face folder out."""

from __future__ import annotations

from pathlib import Path

import click

from registry.checkpoints.gguf import DTYPES, import_gguf

from ._app import App, pass_app
from ._output import human_bytes, short


@click.command("import-gguf")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write (config, safetensors, tokenizer, provenance.json).",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="float32 keeps the dequantized values exactly; bfloat16/float16 halve the size.",
)
@click.option("--force", is_flag=True, help="Replace --out when it exists and is not empty.")
@pass_app
def import_gguf_cmd(app: App, file: Path, out: Path, dtype: str, force: bool) -> None:
    """Dequantize the GGUF FILE into a Hugging Face checkpoint folder (llama, qwen2).

    The source's sha256 is recorded in model.safetensors' metadata and in provenance.json.
    Register the result with `safegene model add DIR`.
    """
    with app.out.progress(f"importing {file.name}") as update:
        res = import_gguf(
            file, out, dtype=dtype, force=force, progress=lambda msg: update(description=msg)
        )
    app.out.emit(
        res.to_json(),
        lambda: app.out.console.print(
            f"wrote {res.out}: {res.architecture}, {res.num_layers} layers, {res.num_params:,} params as {res.dtype} "
            f"from {human_bytes(res.source_bytes)} GGUF sha256 {short(res.source_sha256)} in {res.seconds:.1f} s"
        ),
    )

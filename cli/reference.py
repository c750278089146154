"""Generate docs/CLI.md from the click commands (`python -m cli.reference > docs/CLI.md`).

tests/test_cli_reference.py fails when the committed file drifts from `--help`.
"""

from __future__ import annotations

import click

from .main import cli


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            out += _walk(cmd.commands[name], [*path, name])
    return out


def render() -> str:
    parts = ["# `safegene` command reference", "",
             "Generated from the click commands by `python -m cli.reference`; do not edit by hand.", ""]  # fmt: skip
    for path, cmd in _walk(cli, ["safegene"]):
        # help_option_names as the group sets them: otherwise the text depends on whether
        # a CLI invocation earlier in the process already resolved them.
        with click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                           help_option_names=["-h", "--help"]) as ctx:
            text = cmd.get_help(ctx)
        parts += [f"## {' '.join(path)}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")

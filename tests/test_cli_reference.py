"""docs/CLI.md is generated from the commands; it must not drift from `--help`."""

from __future__ import annotations

from pathlib import Path

from cli.reference import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "CLI.md"


def test_cli_reference_is_current() -> None:
    assert DOC.read_text() == render(), "HOW TO FIX: run `python -m cli.reference > docs/CLI.md` and commit it"


def test_reference_covers_the_contract() -> None:
    text = render()
    for cmd in ["init", "db upgrade", "model add", "family show", "vector extract", "vector score", "resolve",
                "recalibrate", "patch", "eval", "audit identify", "audit verify", "verify", "gc", "toy build", "demo"]:
        assert f"## safegene {cmd}\n" in text, cmd

"""Printing: rich tables and progress for people, one JSON document for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console

# rich's tables and progress bars are imported where used: most commands print
# neither, and every command would pay for them at start-up.


@dataclass
class Output:
    json_mode: bool = False
    quiet: bool = False
    console: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))

    def emit(self, data: Any, human: Callable[[], None] | None = None) -> None:
        """Print ``data`` as JSON in --json mode, else call ``human`` (or print a summary)."""
        if self.json_mode:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        elif human is not None:
            if not self.quiet:
                human()
        elif not self.quiet:
            self.console.print(data)

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.table import Table

        t = Table(title=title, show_lines=False, header_style="bold")
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*["" if v is None else str(v) for v in r])
        self.console.print(t)

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.err.print(message)

    @property
    def show_progress(self) -> bool:
        return not (self.json_mode or self.quiet) and sys.stderr.isatty()

    @contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator[Callable[..., None]]:
        """A progress bar on a terminal (stderr); a no-op elsewhere.

        Yields ``update(done=None, total=None, description=None)``.
        """
        if not self.show_progress:
            yield lambda *a, **k: None
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total)

            def update(done: float | None = None, total: float | None = None, description: str | None = None) -> None:
                kwargs: dict[str, Any] = {}
                if done is not None:
                    kwargs["completed"] = done
                if total is not None:
                    kwargs["total"] = total
                if description is not None:
                    kwargs["description"] = description
                bar.update(task, **kwargs)

            yield update


def _console(*, stderr: bool) -> Console:
    """A terminal keeps its width; pipes and files get 120 columns, not rich's 80."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, highlight=False, width=width)


def short(h: str | None, n: int = 12) -> str:
    return h[:n] if h else "-"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"

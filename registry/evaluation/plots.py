"""PNG plots of layer scores and of the safety–utility table (matplotlib, optional).

matplotlib is imported lazily with the Agg backend, so the library and the CLI
work without it; asking for a plot without it installed is a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..catalog.records import VectorRecord
from ..errors import ConfigurationError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError("plots need matplotlib: pip install 'safegene[plot]'") from None
    return plt


def plot_layer_scores(vec: VectorRecord, out: str | Path) -> Path:
    """Bar chart of per-block safety gain, task cost and score; selected blocks highlighted."""
    plt = _pyplot()
    blocks = [lay for lay in vec.layers if lay.index is not None]
    xs = [lay.index for lay in blocks if lay.index is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(xs) + 3), 4))
    width = 0.28
    ax.bar([x - width for x in xs], [lay.safety_gain or 0 for lay in blocks], width, label="safety gain")
    ax.bar(xs, [lay.task_cost or 0 for lay in blocks], width, label="task cost")
    ax.bar([x + width for x in xs], [lay.score or 0 for lay in blocks], width, label="score",
           color=["tab:green" if lay.selected else "tab:gray" for lay in blocks])  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(xs)
    ax.set_xlabel("block (green score = selected)")
    ax.set_ylabel("Δ cross-entropy")
    ax.set_title(f"{vec.name} ({vec.hash[:12]}): data-aware layer scores")
    ax.legend()
    return _save(fig, plt, out)


def plot_safety_utility(rows: Sequence[dict[str, Any]], out: str | Path, *, title: str) -> Path:
    """Scatter of harmful rate vs task accuracy, one point per (task, model) row."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for r in rows:
        if r.get("harmful_rate") is None or r.get("task_accuracy") is None:
            continue
        ax.scatter(100 * r["task_accuracy"], 100 * r["harmful_rate"], s=40)
        ax.annotate(f"{r.get('task', '')}:{r['model']}", (100 * r["task_accuracy"], 100 * r["harmful_rate"]),
                    fontsize=8, xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("task accuracy %  (→ better)")
    ax.set_ylabel("harmful response rate %  (↓ better)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_title(title)
    return _save(fig, plt, out)


def _save(fig: Any, plt: Any, out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

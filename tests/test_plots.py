"""PNG plots of layer scores and of the safety–utility plane."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from registry.api import Registry
from registry.evaluation.plots import plot_safety_utility
from registry.evaluation.probes import by_kind, load_probes
from registry.toy.build import ToyWorld


def test_vector_show_plot(tmp_path: Path, quick_world: ToyWorld) -> None:
    reg = Registry.open(tmp_path / "home")
    reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="v")
    probes = load_probes(quick_world.shots["all"])
    reg.score_vector("v", by_kind(probes, "harmful")[:4] + by_kind(probes, "task")[:4])
    reg.close()
    out = tmp_path / "scores.png"
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--json", "vector", "show", "v", "--plot", str(out)])
    assert res.exit_code == 0, res.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] >= 400


def test_safety_utility_plot(tmp_path: Path) -> None:
    rows = [{"task": "add", "model": "task", "harmful_rate": 1.0, "task_accuracy": 1.0},
            {"task": "add", "model": "SafeGene", "harmful_rate": 0.6, "task_accuracy": 0.97},
            {"task": "add", "model": "aligned", "harmful_rate": 0.0, "task_accuracy": None}]
    out = plot_safety_utility(rows, tmp_path / "p.png", title="t")
    with Image.open(out) as img:
        assert img.format == "PNG"

"""Nonsense fit settings are refused, in the API and at the CLI (exit 2, one line), before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.errors import InvalidInputError
from registry.method.fit_settings import FitSettings


@pytest.mark.parametrize("bad", [
    {"lambda_max": -1.0}, {"lambda_max": 0.0}, {"init": -0.1}, {"init": 5.0}, {"steps": 0}, {"lr": 0.0},
    {"beta": -1.0}, {"beta_benign": -0.5}, {"gamma": -0.01}, {"batch_size": 0}, {"lr": float("nan")},
    {"steps": 2.5}, {"beta": True}, {"shots_per_step": -1}, {"answer_tokens": 1.5}, {"seed": -2},
])
def test_the_api_refuses_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        FitSettings(**bad)  # type: ignore[arg-type]


def test_defaults_and_edges_are_accepted() -> None:
    FitSettings()
    FitSettings(lambda_max=0.25, init=0.25, gamma=0.0, beta=0.0, beta_benign=0.0, steps=1, batch_size=1)


@pytest.mark.parametrize("args", [
    ["--lambda-max", "-1"], ["--lambda-max", "0"], ["--steps", "0"], ["--beta", "-1"], ["--gamma", "-0.1"],
    ["--beta-benign", "-2"],
])
def test_the_cli_refuses_nonsense_with_usage_exit(tmp_path: Path, args: list[str]) -> None:
    """`patch --lambda-max -1` used to fit and write λ = -1 on every block (subtracting the safety vector)."""
    target = tmp_path / "t"
    target.mkdir()
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "patch", str(target), "--vector", "v",
                                   "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert args[0] in res.output and not (tmp_path / "o").exists()


def test_a_small_lambda_max_brings_init_down_with_it(tmp_path: Path) -> None:
    """--lambda-max below the default init is a sensible request, not an error."""
    from cli.pipeline_cmds import _settings

    s = _settings({"steps": 5, "beta": 1.0, "beta_benign": 1.0, "gamma": 0.0, "lambda_max": 0.2})
    assert s.lambda_max == 0.2 and s.init == 0.2

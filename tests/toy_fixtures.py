"""Session-scoped toy world fixture (imported by conftest via ``pytest_plugins``)."""

from __future__ import annotations

import pytest

from registry.toy import ToyWorld, build_world


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory: pytest.TempPathFactory) -> ToyWorld:
    """The quick llama toy world, built once per test session (~10 s on one core)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return build_world("llama", tmp_path_factory.mktemp("quick-world"), seed=0, quick=True)

"""Shared fixtures: tiny real checkpoints, registries on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from registry.api import Registry

if (Path(__file__).parent / "toy_fixtures.py").is_file():
    pytest_plugins = ["tests.toy_fixtures", "tests.s3_fixtures", "tests.serve_fixtures"]
else:  # pragma: no cover - until the toy fixtures module lands

    @pytest.fixture(scope="session")
    def quick_world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
        from registry.toy import build_world

        return build_world("llama", tmp_path_factory.mktemp("quick-world"), seed=0, quick=True)

PG_ADMIN_URL = os.environ.get("SAFEGENE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def build_tiny(kind: str, out: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0,
               dtype: torch.dtype = torch.float32, shard_size: str | None = None) -> Path:
    """Save a tiny randomly initialised transformers model as a HF folder."""
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                             num_hidden_layers=layers, num_attention_heads=4,
                                             num_key_value_heads=2))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                             num_hidden_layers=layers, num_attention_heads=4,
                                             num_key_value_heads=2))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=hidden, n_layer=layers, n_head=4,
                                           n_positions=64))
    else:
        raise ValueError(kind)
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llama": build_tiny("llama", root / "llama"),
        "llama_b": build_tiny("llama", root / "llama_b", seed=1),
        "llama_bf16": build_tiny("llama", root / "llama_bf16", dtype=torch.bfloat16),
        "llama_sharded": build_tiny("llama", root / "llama_sharded", shard_size="20KB"),
        "llama_wide": build_tiny("llama", root / "llama_wide", hidden=48),
        "qwen2": build_tiny("qwen2", root / "qwen2"),
        "qwen2_bf16": build_tiny("qwen2", root / "qwen2_bf16", dtype=torch.bfloat16),
        "gpt2": build_tiny("gpt2", root / "gpt2"),
    }


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means no usable server
        return f"no PostgreSQL server answers at {PG_ADMIN_URL} ({type(exc).__name__})"


@pytest.fixture(scope="session")
def pg_server() -> str:
    reason = _pg_available()
    if reason:
        skip_or_fail(reason, require="SAFEGENE_REQUIRE_POSTGRES")
    return PG_ADMIN_URL


def skip_or_fail(reason: str, *, require: str = "SAFEGENE_REQUIRE_REAL_MODEL") -> None:
    """Skip a test whose outside part (a server, the real model, a browser) this machine lacks; fail it
    instead where ``require`` is set to 1, as .ci/run sets each of them: CI never skips what a laptop may."""
    if os.environ.get(require) == "1":
        pytest.fail(f"{reason}; {require}=1 (set by .ci/run) forbids skipping it")
    pytest.skip(reason)


# Markers are applied from the fixtures a test uses, so none can be forgotten:
# `pytest -m "not slow"` is the fast loop, `-m "not postgres"` runs without a server.
_SLOW_FIXTURES = {"quick_world", "world_reg"}
_PG_FIXTURES = {"pg_server", "pg_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        callspec = getattr(item, "callspec", None)
        if names & _PG_FIXTURES or (callspec is not None and callspec.params.get("db_url") == "postgres"):
            item.add_marker(pytest.mark.postgres)


def _create_pg_db(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"safegene_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return name, f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def _drop_pg_db(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name, url = _create_pg_db(pg_server)
    try:
        yield url
    finally:
        _drop_pg_db(pg_server, name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def reg(tmp_path: Path, db_url: str) -> Iterator[Registry]:
    r = Registry.open(tmp_path / "home", db_url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def sqlite_reg(tmp_path: Path) -> Iterator[Registry]:
    r = Registry.open(tmp_path / "home")
    try:
        yield r
    finally:
        r.close()

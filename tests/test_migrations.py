"""Schema: built by Alembic only, round-trips, and cannot drift from the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from registry.api import Registry
from registry.catalog import db
from registry.catalog.models import Base
from registry.errors import SchemaOutdatedError

TABLES = {"families", "checkpoints", "blobs", "vectors", "vector_layers", "probe_sets",
          "recalibrations", "audit_events"}


def test_upgrade_downgrade_round_trip(db_url: str) -> None:
    engine = db.create_catalog_engine(db_url)
    try:
        before, after = db.upgrade(engine)
        assert before is None and after == db.head_revision()
        assert TABLES <= set(inspect(engine).get_table_names())
        db.downgrade(engine, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        assert db.current_revision(engine) is None
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_models_and_migrations_do_not_drift(db_url: str) -> None:
    """HOW TO FIX: a model changed without a migration. Run
    `alembic revision --autogenerate` (see migrations/) and review the result."""
    engine = db.create_catalog_engine(db_url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_outdated_catalog_asks_for_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = db.create_catalog_engine(url)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000old'")
    engine.dispose()
    with pytest.raises(SchemaOutdatedError, match="safegene db upgrade"):
        Registry.open(tmp_path / "home", url)


def test_open_creates_empty_catalog_once(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "home")
    assert db.current_revision(reg.engine) == db.head_revision()
    assert (tmp_path / "home" / "catalog.db").is_file()
    reg.close()
    # idempotent: a second open and an explicit init change nothing
    reg = Registry.open(tmp_path / "home")
    res = reg.init()
    assert res.revision_before == res.revision == db.head_revision()
    reg.close()


def test_sqlite_pragmas(sqlite_reg: Registry) -> None:
    with sqlite_reg.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_upgrade_from_previous_revision_keeps_data(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from sqlalchemy import text

    from cli.main import cli

    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = db.create_catalog_engine(url)
    db.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO blobs (sha256, codec, raw_size, stored_size, created_at) "
                          "VALUES (:s, 'zstd', 1, 1, '2026-01-01')"), {"s": "a" * 64})
    engine.dispose()
    with pytest.raises(SchemaOutdatedError):
        Registry.open(tmp_path / "home", url)
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--db", url, "db", "upgrade"])
    assert res.exit_code == 0, res.stderr
    reg = Registry.open(tmp_path / "home", url)
    assert reg.read(lambda s: s.execute(text("SELECT COUNT(*) FROM blobs")).scalar()) == 1
    reg.close()


def test_head_revision_constant_is_the_scripts_head() -> None:
    """HOW TO FIX: a migration was added; set db.HEAD_REVISION to its revision."""
    assert db.HEAD_REVISION == db.head_revision()


def test_opening_a_catalog_at_head_does_not_load_alembic(tmp_path: Path) -> None:
    import subprocess
    import sys

    Registry.open(tmp_path / "home").close()  # created (through Alembic) in this process
    code = ("import sys; from registry import Registry; Registry.open(sys.argv[1]).close(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout  # fmt: skip
    assert out.strip() == "[]"

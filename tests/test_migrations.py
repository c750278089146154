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


def test_events_from_before_0004_still_verify_and_new_ones_cover_the_signer(tmp_path: Path,
                                                                            tiny_models: dict[str, Path]) -> None:
    """A catalog written at 0003 (entry hashes without the signer) upgrades to head with its chain intact."""
    from sqlalchemy import select, update

    from registry.audit import chain
    from registry.catalog import models as m

    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = db.create_catalog_engine(url)
    db.upgrade(engine, "0003")
    engine.dispose()
    # two events as revision 0003 wrote them: version-1 entry hashes (the signer not covered)
    from sqlalchemy import text

    prev = chain.GENESIS
    engine = db.create_catalog_engine(url)
    for seq in (1, 2):
        row = m.AuditEvent(seq=seq, uid=f"00000000-0000-0000-0000-00000000000{seq}", kind="note", actor="t",
                           tool_version="0.1.0", created_at=f"2026-11-2{seq}T00:00:00", vector_hash=None,
                           target_hash=None, output_hash=None, payload_json='{"i":1}', prev_hash=prev,
                           hash_version=1, signer=None, signature=None)
        row.entry_hash = chain.entry_hash(row)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO audit_events (seq, uid, kind, actor, tool_version, created_at, payload_json, "
                              "prev_hash, entry_hash) VALUES (:seq, :uid, 'note', 't', '0.1.0', :at, :p, :prev, :h)"),
                         {"seq": seq, "uid": row.uid, "at": row.created_at, "p": row.payload_json, "prev": prev,
                          "h": row.entry_hash})
        prev = row.entry_hash
    engine.dispose()
    assert db.current_revision(db.create_catalog_engine(url)) == "0003"
    db.upgrade(db.create_catalog_engine(url))
    reg = Registry.open(tmp_path / "home", url)
    reg.catalog.transaction(lambda s: chain.append_event(s, "note", {"i": 2}, actor="t"))
    versions = reg.read(lambda s: list(s.scalars(select(m.AuditEvent.hash_version).order_by(m.AuditEvent.seq))))
    assert versions == [1, 1, 2]
    assert reg.audit_verify().ok
    # a version-1 event's signer is not covered (the documented limit of old events); a version-2 one's is
    reg.transaction(lambda s: s.execute(update(m.AuditEvent).where(m.AuditEvent.seq == 3).values(signer="ab" * 32)))
    assert not reg.audit_verify().ok
    reg.close()


"""Retry decisions come from the driver's error codes (SQLSTATE, SQLite result codes), not message text:
an error whose text merely mentions a lock (here: in the failing statement) is not retried."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from registry.catalog.db import _retryable


def test_sqlite_busy_is_retryable_and_a_syntax_error_is_not(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with pytest.raises(OperationalError) as busy:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert _retryable(busy.value)
    holder.execute("ROLLBACK")
    with pytest.raises(OperationalError) as bad:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO no_such_table VALUES ('database is locked')")
    assert not _retryable(bad.value)
    engine.dispose()
    holder.close()


@pytest.mark.postgres
def test_postgres_lock_not_available_is_retryable(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    holder = engine.connect()
    tx = holder.begin()
    holder.execute(text("SELECT a FROM t WHERE a = 1 FOR UPDATE"))
    with pytest.raises(OperationalError) as locked:
        with engine.begin() as conn:
            conn.execute(text("SELECT a FROM t WHERE a = 1 FOR UPDATE NOWAIT"))
    assert locked.value.orig.sqlstate == "55P03" and _retryable(locked.value)  # type: ignore[union-attr]
    tx.rollback()
    holder.close()
    with pytest.raises(ProgrammingError) as bad:
        with engine.begin() as conn:
            conn.execute(text("SELECT 'deadlock, could not serialize' FROM no_such_table"))
    assert not _retryable(bad.value)
    engine.dispose()

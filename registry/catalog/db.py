"""Engines, transactions and schema management for the catalog.

Embedded default: one SQLite file under the registry home, in WAL mode, with a
busy timeout and foreign keys on; every transaction starts with
``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of
failing when one upgrades a read lock. PostgreSQL through a
``postgresql+psycopg://`` URL. Both get the same Alembic migrations, run under
a lock (a file lock beside the SQLite file, an advisory lock on PostgreSQL) so
that processes starting at once on a new catalog do not race.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .._faults import crashpoint
from ..errors import ConfigurationError, ConflictError, SchemaOutdatedError

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# The newest migration's revision (a test checks it is the scripts' head). Opening
# a catalog compares its version row with this, without loading Alembic (about
# 0.1 s of imports that every command would otherwise pay).
HEAD_REVISION = "0006"
_PG_LOCK_KEY = 0x5AFE6E1E  # advisory lock id for migrations
AUDIT_LOCK_KEY = 0x5AFE6E1A  # advisory lock id for audit appends
_STORE_LOCK_KEY = 0x5AFE6E5B  # advisory lock id for blob writers (shared) and gc (exclusive)
_BUSY_MS = 60_000


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    if not u.database or u.database == ":memory:":
        raise ConfigurationError("an in-memory SQLite catalog cannot be shared; give a file path")
    return Path(u.database)


POOL_SIZE = 8  # connections an engine keeps open; `safegene serve --threads` is at most this
# Requests one `safegene serve` process answers at once, by default. On a shared host fewer threads keep
# latency tighter (16 clients, 2 processes, 2 cores: p95 25-33 ms with 2 or 4 threads, 29-51 ms with 8:
# GIL hand-offs); a database across a network wants more, to cover its round trips.
SERVE_THREADS = 4


def create_catalog_engine(url: str, *, for_reads: bool = False) -> Engine:
    """Create an engine for a catalog URL (SQLite file or PostgreSQL).

    ``for_reads`` (SQLite only): transactions start deferred, so readers never
    queue behind the write lock (WAL lets them read a consistent snapshot).

    Raises:
        ConfigurationError: unsupported or malformed URL.
    """
    try:
        u = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError
        raise ConfigurationError(f"bad database URL {url!r}: {exc}") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(url)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": _BUSY_MS / 1000}, pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
        _configure_sqlite(engine, begin="BEGIN" if for_reads else "BEGIN IMMEDIATE")
        return engine
    if backend == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(u, pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
    raise ConfigurationError(
        f"unsupported database {backend!r}: use a sqlite:///PATH or postgresql+psycopg:// URL"
    )


def _configure_sqlite(engine: Engine, *, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's lazy BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


# PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
# SQLite primary result codes: SQLITE_BUSY, SQLITE_LOCKED (extended codes keep them in the low byte).
_RETRY_SQLITE_CODES = frozenset({5, 6})


def _retryable(exc: Exception) -> bool:
    """A lost race or a lock timeout, told by the driver's error code (never by message text)."""
    orig = getattr(exc, "orig", exc)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _RETRY_SQLSTATES
    code = getattr(orig, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _RETRY_SQLITE_CODES


def run_in_transaction(
    factory: sessionmaker[Session], fn: Callable[[Session], T], *, attempts: int = 8
) -> T:
    """Run ``fn`` in one transaction, retrying on lock timeouts and lost races.

    ``fn`` must be safe to re-run from the start (it re-reads what it needs).
    An ``IntegrityError`` is retried once more so get-or-create code can see
    the row a concurrent writer just committed; if it persists it becomes a
    :class:`ConflictError`.
    """
    delay = 0.05
    for attempt in range(attempts):
        try:
            with session_scope(factory) as session:
                return fn(session)
        except IntegrityError as exc:
            if attempt >= 2:
                raise ConflictError(f"a concurrent write conflicted and was retried: {exc.orig}") from exc
        except OperationalError as exc:
            if not _retryable(exc) or attempt == attempts - 1:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise ConflictError("gave up after repeated lock timeouts; is another process stuck?")


@contextlib.contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close."""
    session = factory()
    try:
        yield session
        crashpoint("db.before-commit")
        session.commit()
        crashpoint("db.committed")
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- schema ---------------------------------------------------------------


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Serialize schema changes across processes (file lock or advisory lock)."""
    if is_sqlite(engine):
        path = _sqlite_path(str(engine.url))
        assert path is not None
        with open(str(path) + ".migrate-lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()


@contextlib.contextmanager
def writers_lock(engine: Engine, *, exclusive: bool) -> Iterator[None]:
    """The store's writers/collector lock, held in the catalog so that every host sees it.

    PostgreSQL: a session advisory lock on a connection of its own, released by
    the server if this process dies. SQLite (one host): a file lock beside the file.
    """
    if is_sqlite(engine):
        path = _sqlite_path(str(engine.url))
        assert path is not None
        with open(str(path) + ".writers-lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield  # closing the file releases the lock
        return
    lock, unlock = ("pg_advisory_lock", "pg_advisory_unlock") if exclusive else (
        "pg_advisory_lock_shared", "pg_advisory_unlock_shared")
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # never idle in a transaction
        conn.execute(text(f"SELECT {lock}(:k)"), {"k": _STORE_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text(f"SELECT {unlock}(:k)"), {"k": _STORE_LOCK_KEY})


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Run migrations up to ``revision`` under the migration lock.

    Returns:
        (revision before, revision after).
    """
    with migration_lock(engine):
        before = current_revision(engine)
        _upgrade_locked(engine, revision)
        return before, current_revision(engine)


def _upgrade_locked(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with migration_lock(engine):
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()


def ensure_schema(engine: Engine, *, create: bool) -> None:
    """Check the catalog is at head; create it when empty and ``create`` is set.

    Raises:
        SchemaOutdatedError: the catalog exists at another revision (or is
            empty and ``create`` is false).
    """
    if _version_rows(engine) == [HEAD_REVISION]:
        return  # the usual case, decided without Alembic
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    if current is None and create:
        # Decide under the lock: another process may be creating this catalog
        # right now (its tables exist before its version row does).
        with migration_lock(engine):
            current = current_revision(engine)
            if current is None and not _has_tables(engine):
                _upgrade_locked(engine, "head")
                return
    if current != head:
        raise SchemaOutdatedError(current, head)


def _version_rows(engine: Engine) -> list[str] | None:
    """The catalog's ``alembic_version`` rows (None: no such table yet)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def _has_tables(engine: Engine) -> bool:
    names = set(inspect(engine).get_table_names()) - {"alembic_version"}
    return bool(names)

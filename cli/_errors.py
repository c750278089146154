"""One table from error type to exit code; the CLI never calls sys.exit itself.

Exit codes: 0 ok, 1 a check failed (verify found a problem), 2 usage, 3+ errors by kind.
Errors that are not the registry's own but reach the boundary anyway (the file
system, the database server, input too deep or too large) get a row too, so a
user always sees one line, never a traceback.
"""

from __future__ import annotations

from registry import errors as e

# Most specific first: the first matching row wins.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (e.NotFoundError, 3),
    (e.AmbiguousReferenceError, 3),
    (e.AlreadyExistsError, 4),
    (e.InvalidCheckpointError, 5),
    (e.InvalidInputError, 5),
    (e.IncompatibleError, 6),
    (e.IntegrityCheckError, 7),
    (e.SchemaOutdatedError, 8),
    (e.ConfigurationError, 9),
    (e.ConflictError, 10),
    (e.RegistryError, 11),
    (RecursionError, 5),
    (MemoryError, 5),
    (OSError, 12),
]
CHECK_FAILED = 1
DATABASE_UNREACHABLE = 9


def exit_code_for(exc: BaseException) -> int:
    if _is_database_error(exc):
        return DATABASE_UNREACHABLE
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return 11


def boundary_error(exc: BaseException) -> bool:
    """Whether an exception that is not a RegistryError is one the CLI reports in one line."""
    return isinstance(exc, RecursionError | MemoryError | OSError) or _is_database_error(exc)


def message_for(exc: BaseException) -> str:
    """The one line a user sees, saying what went wrong and what to do."""
    if isinstance(exc, e.RegistryError):
        return one_line(exc)
    if _is_database_error(exc):
        cause = getattr(exc, "orig", None) or exc
        return one_line(f"cannot use the catalog database ({type(cause).__name__}: {cause}); "
                        "check --db / SAFEGENE_DB_URL and that the server is running")  # fmt: skip
    if isinstance(exc, RecursionError):
        return "input is nested too deeply to be read; it is not a file safegene writes or accepts"
    if isinstance(exc, MemoryError):
        return "out of memory while reading the input; it claims more than this machine can hold"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return one_line(f"{exc.strerror or type(exc).__name__}{where}; check the path and its permissions")
    return one_line(exc)


def one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _is_database_error(exc: BaseException) -> bool:
    # sqlalchemy is imported by every command that opens the catalog; look it up
    # without importing it here (the CLI's start-up stays light).
    import sys

    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)

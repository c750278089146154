"""Errors as JSON: ``{"error": {"code": NAME, "exit_code": N, "message": ...}}``.

``code`` is the name of the exit code the CLI gives the same error
(``cli/_errors.py``; a test keeps the two tables in step); the HTTP status says
whose fault it is. Messages never carry file-system paths unless the operator
lets them (``--expose-paths``).
"""

from __future__ import annotations

import re
from typing import Any

from .. import errors as e

# exit code -> name; the CLI's codes (cli/_errors.py) plus UNAUTHORIZED, which only a server has.
CODE_NAMES = {1: "CHECK_FAILED", 2: "USAGE", 3: "NOT_FOUND", 4: "ALREADY_EXISTS", 5: "INVALID_INPUT",
              6: "INCOMPATIBLE", 7: "INTEGRITY_CHECK_FAILED", 8: "SCHEMA_OUTDATED", 9: "CONFIGURATION",
              10: "CONFLICT", 11: "REGISTRY_ERROR", 12: "OS_ERROR"}  # fmt: skip
UNAUTHORIZED = "UNAUTHORIZED"

# Most specific first, as the CLI's table: (type, HTTP status, exit code).
STATUS: list[tuple[type[BaseException], int, int]] = [
    (e.NotFoundError, 404, 3),
    (e.AmbiguousReferenceError, 409, 3),
    (e.AlreadyExistsError, 409, 4),
    (e.InvalidCheckpointError, 400, 5),
    (e.InvalidInputError, 400, 5),
    (e.IncompatibleError, 422, 6),
    (e.IntegrityCheckError, 500, 7),
    (e.SchemaOutdatedError, 503, 8),
    (e.ConfigurationError, 503, 9),
    (e.ConflictError, 409, 10),
    (e.RegistryError, 400, 11),
    (RecursionError, 400, 5),
    (MemoryError, 413, 5),
    (OSError, 500, 12),
]
_DATABASE_DOWN = (503, 9)
_PATH = re.compile(r"(?<![\w:/])/(?:[^\s'\"/]+/)+[^\s'\",;)]*")


def classify(exc: BaseException) -> tuple[int, int]:
    """(HTTP status, exit code) for an exception, as the CLI would exit on it."""
    if _is_database_down(exc):
        return _DATABASE_DOWN
    for kind, status, code in STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, 11


def error_body(code: int | str, message: str, *, expose_paths: bool = False) -> dict[str, Any]:
    name = code if isinstance(code, str) else CODE_NAMES.get(code, "REGISTRY_ERROR")
    text = " ".join(message.split())
    if not expose_paths:
        text = _PATH.sub("<path>", text)
    body: dict[str, Any] = {"code": name, "message": text[:600]}
    if isinstance(code, int):
        body["exit_code"] = code
    return {"error": body}


def message_for(exc: BaseException) -> str:
    if _is_database_down(exc):
        return "cannot reach the catalog database; check --db / SAFEGENE_DB_URL and that the server is running"
    if isinstance(exc, RecursionError):
        return "input is nested too deeply to be read"
    if isinstance(exc, e.RegistryError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}; the registry could not read a file it needs"
    return "internal error; the server's log has the details"


def _is_database_down(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa_exc

    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)

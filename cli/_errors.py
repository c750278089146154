"""One table from error type to exit code; the CLI never calls sys.exit itself.

Exit codes: 0 ok, 1 a check failed (verify found a problem), 2 usage, 3+ errors by kind.
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
]
CHECK_FAILED = 1


def exit_code_for(exc: BaseException) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return 11


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 600 else text[:597] + "..."

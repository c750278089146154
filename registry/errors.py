"""Every error the library raises on purpose derives from :class:`RegistryError`.

Subclasses also inherit the matching built-in so that callers who do not know
this module can still catch them (``except LookupError`` works for a missing
vector). Each carries its details as attributes and a message that says what
to do next. The CLI maps these types to exit codes in one table
(``cli/_errors.py``).
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error raised by the registry on purpose."""


class ConfigurationError(RegistryError, ValueError):
    """A setting (home, database URL, option value) is unusable."""


class SchemaOutdatedError(RegistryError, RuntimeError):
    """The catalog's schema is older (or newer) than this version of the code."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            f"catalog schema is at revision {current or 'none'}, this safegene needs {head}: "
            "run `safegene db upgrade`"
        )


class NotFoundError(RegistryError, LookupError):
    """A named object does not exist in the catalog."""

    kind = "object"

    def __init__(self, ref: str, hint: str | None = None) -> None:
        self.ref = ref
        msg = f"no {self.kind} matches {ref!r}"
        super().__init__(f"{msg}: {hint}" if hint else msg)


class CheckpointNotFoundError(NotFoundError):
    kind = "checkpoint"


class FamilyNotFoundError(NotFoundError):
    kind = "family"


class VectorNotFoundError(NotFoundError):
    kind = "vector"


class EventNotFoundError(NotFoundError):
    kind = "audit event"


class AmbiguousReferenceError(RegistryError, LookupError):
    """A hash prefix matches more than one object."""

    def __init__(self, ref: str, matches: list[str]) -> None:
        self.ref = ref
        self.matches = matches
        super().__init__(
            f"{ref!r} matches {len(matches)} objects ({', '.join(m[:12] for m in matches[:4])}…): "
            "give a longer hash prefix or the name"
        )


class AlreadyExistsError(RegistryError, FileExistsError):
    """A name is taken, or an output path exists and --force was not given."""


class InvalidCheckpointError(RegistryError, ValueError):
    """A checkpoint folder or file is missing, malformed or unsafe to read."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class InvalidInputError(RegistryError, ValueError):
    """A probe/shot file, bundle or option value is malformed."""


class IncompatibleError(RegistryError, ValueError):
    """A vector does not fit a target, or two checkpoints are of different families."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        self.reasons = list(reasons or [])
        detail = f" ({'; '.join(self.reasons[:3])})" if self.reasons else ""
        super().__init__(message + detail)


class IntegrityCheckError(RegistryError, ValueError):
    """Stored bytes or a catalog record do not match their recorded hash."""


class ConflictError(RegistryError, RuntimeError):
    """A concurrent writer won a race that could not be retried."""


class StoreUnavailableError(ConfigurationError):
    """The blob store does not answer, or refuses these credentials or this bucket."""

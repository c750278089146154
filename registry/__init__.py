"""SafeGene Registry: safety vectors, a family-aware catalog and a content-addressed store."""

from ._version import __version__
from .api import InitResult, Registry
from .catalog.records import (
    AuditRecord,
    CheckpointRecord,
    FamilyRecord,
    FamilySummary,
    LayerRecord,
    VectorRecord,
)
from .errors import RegistryError

__all__ = [
    "AuditRecord",
    "CheckpointRecord",
    "FamilyRecord",
    "FamilySummary",
    "InitResult",
    "LayerRecord",
    "Registry",
    "RegistryError",
    "VectorRecord",
    "__version__",
]

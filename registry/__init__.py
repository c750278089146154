"""SafeGene Registry: safety vectors, a family-aware catalog and a content-addressed store."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("safegene")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .api import InitResult, Registry
from .catalog.records import AuditRecord, CheckpointRecord, FamilyRecord, LayerRecord, VectorRecord
from .errors import RegistryError

__all__ = [
    "AuditRecord",
    "CheckpointRecord",
    "FamilyRecord",
    "InitResult",
    "LayerRecord",
    "Registry",
    "RegistryError",
    "VectorRecord",
    "__version__",
]

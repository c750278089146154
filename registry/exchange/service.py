"""The exchange service: vectors in and out of the registry as bundle files and PEFT LoRA adapters.

The PEFT modules import torch; they are imported when a PEFT method runs, so
that building the service (opening a registry) does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..catalog.records import VectorRecord
from ..catalog.service import Catalog
from ..method.pipeline import Recalibrator
from ..method.vectors import Vectors
from .bundle import export_bundle, import_bundle
from .bundle_format import DEFAULT_MAX_BYTES, BundleInfo, verify_bundle
from .peft import PeftExport


class Exchange:
    """Exports and imports of vectors (see :mod:`.bundle_format` and :mod:`.peft` for the formats).

    Args:
        catalog: families, probe sets and source checkpoints.
        vectors: the vectors, their slices and their store.
        recalibrator: fit checks and cached coefficients (PEFT export for a target).
    """

    def __init__(self, catalog: Catalog, vectors: Vectors, recalibrator: Recalibrator) -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.recalibrator = recalibrator

    def export_bundle(self, ref: str, out: str | Path, *, sign_key: str | Path | None = None,
                      force: bool = False) -> BundleInfo:  # fmt: skip
        """Write one vector into a bundle file (see :func:`registry.exchange.bundle.export_bundle`)."""
        return export_bundle(self.catalog, self.vectors, ref, out, sign_key=sign_key, force=force)

    def import_bundle(self, path: str | Path, *, name: str | None = None, verify_key: str | Path | None = None,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> VectorRecord:  # fmt: skip
        """Verify a bundle completely, then register it (see :func:`registry.exchange.bundle.import_bundle`)."""
        return import_bundle(self.catalog, self.vectors, path, name=name, verify_key=verify_key, max_bytes=max_bytes)

    @staticmethod
    def verify_bundle(path: str | Path, *, verify_key: str | Path | None = None,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> BundleInfo:  # fmt: skip
        """Check a bundle completely without writing anything (see :func:`.bundle_format.verify_bundle`)."""
        return verify_bundle(path, verify_key=verify_key, max_bytes=max_bytes)

    def export_peft(self, ref: str, out: str | Path, *, target: str | Path | None = None,
                    base: str | Path | None = None, rank: int | None = None, energy: float | None = None,
                    coefficients: Mapping[str, float] | None = None, skip_unsupported: bool = False,
                    force: bool = False, lossy: bool = False) -> PeftExport:  # fmt: skip
        """Write a vector as a PEFT LoRA adapter folder (see :func:`registry.exchange.peft_export.export_peft`)."""
        from .peft_export import export_peft  # imports torch

        return export_peft(self.catalog, self.vectors, self.recalibrator, ref, out, target=target, base=base,
                           rank=rank, energy=energy, coefficients=coefficients,
                           skip_unsupported=skip_unsupported, force=force, lossy=lossy)  # fmt: skip

    def import_peft(self, path: str | Path, *, name: str, base: str | Path) -> VectorRecord:
        """Register a PEFT LoRA adapter folder as a vector (see :func:`registry.exchange.peft_import.import_peft`)."""
        from .peft_import import import_peft  # imports torch

        return import_peft(self.catalog, self.vectors, path, name=name, base=base)

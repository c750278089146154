"""The public registry handle: a façade over the services that share one catalog and store.

Example:
    >>> from registry import Registry
    >>> reg = Registry.open("/tmp/sg-home")                       # doctest: +SKIP
    >>> reg.add_model("world/aligned", role="aligned")            # doctest: +SKIP
    >>> vec = reg.extract_vector("world/aligned", "world/degraded", name="llama-safety")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .audit.chain import ChainReport
from .audit.integrity import GcReport, Identification, Integrity, VerifyReport
from .audit.log import AuditLog
from .audit.signing import load_key
from .catalog.records import (
    AuditRecord,
    CheckpointRecord,
    FamilyRecord,
    FamilySummary,
    LayerRecord,
    ModelName,
    RecalibrationRecord,
    VectorRecord,
)
from .catalog.service import ROLES, Catalog, current_actor
from .errors import ConfigurationError, ConflictError, InvalidInputError
from .evaluation.probes import Probe
from .exchange.bundle_format import DEFAULT_MAX_BYTES, BundleInfo
from .exchange.peft import PeftExport
from .exchange.service import Exchange
from .method.fit_settings import FitSettings
from .method.patcher import Patcher, PatchResult
from .method.pipeline import RecalibrationResult, Recalibrator
from .method.resolve import Candidate, Resolver
from .method.vectors import BlobRow, VectorDetails, Vectors
from .store import location
from .store.base import Store
from .store.codec import Scratch
from .store.migrate import MigrationReport, copy_blobs

if TYPE_CHECKING:
    import torch

__all__ = ["ROLES", "InitResult", "Registry", "SearchResult", "current_actor", "default_home"]

T = TypeVar("T")
Progress = Callable[[int, int], None]
Shots = str | Path | Sequence[Probe]


def default_home() -> Path:
    """``$SAFEGENE_HOME``, else ``~/.safegene``."""
    return Path(os.environ.get("SAFEGENE_HOME") or Path.home() / ".safegene").expanduser()


@dataclass(frozen=True)
class SearchResult:
    families: list[FamilyRecord]
    vectors: list[VectorRecord]
    models: list[CheckpointRecord]


@dataclass(frozen=True)
class InitResult:
    home: str
    db_url: str
    revision_before: str | None
    revision: str | None
    store: str = location.LOCAL


class Registry:
    """A catalog (SQL) and a blob store (directory or bucket), and the services over them.

    Args:
        home: registry home; default ``$SAFEGENE_HOME`` or ``~/.safegene``.
        db_url: catalog URL; default ``$SAFEGENE_DB_URL`` or a SQLite file in home.
        sign_key: PEM Ed25519 private key; every audit event appended through
            this handle is signed with it.
        store_url: where the blobs live (:mod:`registry.store.location`): default
            ``$SAFEGENE_STORE_URL``, else what the catalog records, else ``<home>/store``.
        store_endpoint: an S3-compatible service's URL (default
            ``$SAFEGENE_STORE_ENDPOINT``, else boto3's ``AWS_ENDPOINT_URL``).

    Use :meth:`open` rather than the constructor: it creates an empty catalog
    on first use and refuses an outdated one.

    Each service is built with what it needs and can be used alone; the methods
    below are one-line delegations to them:

    * ``catalog`` (:class:`~registry.catalog.service.Catalog`): sessions and
      transactions, checkpoints, families.
    * ``store`` (:class:`~registry.store.base.Store`): content-addressed blobs.
    * ``audit`` (:class:`~registry.audit.log.AuditLog`): the hash-chained events
      (append, list, show, verify, head), signed with ``sign_key``.
    * ``vectors`` (:class:`~registry.method.vectors.Vectors`): extraction,
      registration, listing, slice loading and removal of vectors.
    * ``recalibrator`` (:class:`~registry.method.pipeline.Recalibrator`): layer
      scores, cached coefficient fits, the fit check.
    * ``resolver`` (:class:`~registry.method.resolve.Resolver`): which vectors fit a target.
    * ``patcher`` (:class:`~registry.method.patcher.Patcher`): patched models and their events.
    * ``exchange`` (:class:`~registry.exchange.service.Exchange`): bundles and PEFT adapters.
    * ``integrity`` (:class:`~registry.audit.integrity.Integrity`): verify, gc, identify.
    """

    def __init__(self, home: str | Path | None = None, db_url: str | None = None, *,
                 sign_key: str | Path | None = None, store_url: str | None = None,
                 store_endpoint: str | None = None) -> None:  # fmt: skip
        self.home = Path(home).expanduser() if home else default_home()
        self.db_url = db_url or os.environ.get("SAFEGENE_DB_URL") or (
            f"sqlite:///{(self.home / 'catalog.db').resolve()}"
        )
        self.catalog = Catalog(self.db_url)
        self._store_asked = store_url or os.environ.get("SAFEGENE_STORE_URL") or None
        self._store_endpoint = store_endpoint
        self.audit = AuditLog(self.catalog, load_key(Path(sign_key), private=True) if sign_key else None)
        self._wire(self._open_store(self._store_asked))

    def _open_store(self, url: str | None) -> Store:
        return location.open_store(url, home=self.home, lock=self.catalog.writers_lock,
                                   endpoint=self._store_endpoint)  # fmt: skip

    def _wire(self, store: Store) -> None:
        self.store = store
        store.guard = self._check_store_current
        self.vectors = Vectors(self.catalog, store, self.audit)
        self.recalibrator = Recalibrator(self.catalog, self.vectors, self.audit)
        self.resolver = Resolver(self.catalog)
        self.patcher = Patcher(self.catalog, self.vectors, self.recalibrator, self.audit)
        self.exchange = Exchange(self.catalog, self.vectors, self.recalibrator)
        self.integrity = Integrity(self.catalog, store, self.audit)

    @classmethod
    def open(cls, home: str | Path | None = None, db_url: str | None = None, *, create: bool = True,
             sign_key: str | Path | None = None, store_url: str | None = None,
             store_endpoint: str | None = None) -> Self:  # fmt: skip
        """Open a registry, creating home and an empty catalog when ``create``.

        Raises:
            SchemaOutdatedError: the catalog needs `safegene db upgrade` (never upgraded implicitly).
        """
        reg = cls(home, db_url, sign_key=sign_key, store_url=store_url, store_endpoint=store_endpoint)
        if create:
            reg.home.mkdir(parents=True, exist_ok=True)
        reg.catalog.ensure_schema(create=create)
        reg.locate_store(record=create)
        if create:
            reg.store.ensure()
        return reg

    def locate_store(self, *, record: bool) -> None:
        """Use the store the catalog records; refuse a --store that disagrees with it.

        Raises:
            ConfigurationError: the catalog's blobs are elsewhere than the store asked for.
        """
        recorded = self.catalog.get_setting(location.SETTING)
        asked = location.canonical_url(self._store_asked, self.home) if self._store_asked else None
        if recorded is None:
            if asked is None or asked == location.LOCAL:
                return
            if self.catalog.count_blobs():
                raise ConfigurationError(
                    f"this catalog's blobs are in {self.home / 'store'}, not {asked}: move them first with "
                    f"`safegene store migrate --to {asked}`")  # fmt: skip
            if record:
                self.store.probe()  # a bucket that answers, before the catalog points at it
                self.catalog.set_setting(location.SETTING, asked)
            return
        if asked is not None and asked != recorded:
            raise ConfigurationError(
                f"this catalog's blobs live in {recorded}, not {asked}: drop --store / SAFEGENE_STORE_URL, "
                f"or move them with `safegene store migrate --to {asked}`")  # fmt: skip
        if location.canonical_url(self.store.url, self.home) != recorded:
            self._wire(self._open_store(recorded))

    def _check_store_current(self) -> None:
        recorded = self.catalog.get_setting(location.SETTING) or location.LOCAL
        if location.canonical_url(recorded, self.home) != location.canonical_url(self.store.url, self.home):
            raise ConflictError(f"the catalog's blobs moved to {recorded} while this command waited; run it again")

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def init(self) -> InitResult:
        """Create home, store and catalog, and run migrations (idempotent)."""
        self.home.mkdir(parents=True, exist_ok=True)
        asked = self.store
        asked.probe()  # an unusable --store fails before anything is created
        before, after = self.catalog.upgrade()
        self.locate_store(record=True)
        if self.store is not asked:  # the catalog records another store: that one must answer too
            self.store.probe()
        return InitResult(str(self.home), self.catalog.safe_url, before, after, self.store_location)

    @property
    def store_location(self) -> str:
        """Where the blobs live, as the catalog records it (``local``: HOME/store)."""
        return location.canonical_url(self.store.url, self.home)

    # --- catalog ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.catalog.engine

    @property
    def safe_url(self) -> str:
        return self.catalog.safe_url

    def transaction(self, fn: Callable[[Session], T]) -> T:
        return self.catalog.transaction(fn)

    def read(self, fn: Callable[[Session], T]) -> T:
        return self.catalog.read(fn)

    def add_model(self, path: str | Path, *, name: str | None = None, role: str = "task", parent: str | None = None,
                  progress: Callable[[str], None] | None = None) -> CheckpointRecord:  # fmt: skip
        return self.catalog.add_model(path, name=name, role=role, parent=parent, progress=progress)

    def get_model(self, ref: str) -> CheckpointRecord:
        return self.catalog.get_model(ref)

    def list_models(self, *, family: str | None = None, role: str | None = None, offset: int = 0,
                    limit: int | None = None) -> list[CheckpointRecord]:  # fmt: skip
        return self.catalog.list_models(family=family, role=role, offset=offset, limit=limit)

    def models_by_hash(self, hashes: list[str]) -> dict[str, CheckpointRecord]:
        return self.catalog.models_by_hash(hashes)

    def list_families(self) -> list[FamilyRecord]:
        return self.catalog.list_families()

    def families_page(self, *, offset: int = 0, limit: int = 50) -> list[FamilySummary]:
        return self.catalog.families_page(offset=offset, limit=limit)

    def get_family(self, ref: str) -> FamilyRecord:
        return self.catalog.get_family(ref)

    # --- vectors ------------------------------------------------------------------

    def extract_vector(self, aligned: str | Path, degraded: str | Path, *, name: str, scope: str = "blocks",
                       encoding: str = "fp32", progress: Progress | None = None) -> VectorRecord:  # fmt: skip
        return self.vectors.extract(aligned, degraded, name=name, scope=scope, encoding=encoding, progress=progress)

    def get_vector(self, ref: str) -> VectorRecord:
        return self.vectors.get(ref)

    def vector_details(self, ref: str, *, offset: int = 0, limit: int = 50) -> VectorDetails:
        """A vector with its pair's records, its recalibrations and a page of the patch events naming it."""
        return self.vectors.details(ref, offset=offset, limit=limit)

    def list_vectors(self, *, family: str | None = None, limit: int | None = None) -> list[VectorRecord]:
        return self.vectors.list_vectors(family=family, limit=limit)

    def vectors_page(self, *, family: str | None = None, offset: int = 0, limit: int = 50) -> list[VectorRecord]:
        return self.vectors.page(family=family, offset=offset, limit=limit)

    def search(self, text: str, *, limit: int = 20) -> SearchResult:
        """Families, vectors and checkpoints whose name contains ``text`` or whose hash/id starts with it."""
        return SearchResult(self.catalog.search_families(text, limit=limit), self.vectors.search(text, limit=limit),
                            self.catalog.search_models(text, limit=limit))  # fmt: skip

    def count_vectors(self) -> int:
        return self.vectors.count()

    def remove_vector(self, ref: str) -> VectorRecord:
        return self.vectors.remove(ref)

    def load_vector_slices(self, vec: VectorRecord, *,
                           positions: list[int] | None = None) -> dict[int, dict[str, torch.Tensor]]:  # fmt: skip
        return self.vectors.load_slices(vec, positions=positions)

    def load_slice(self, vec: VectorRecord, lay: LayerRecord, *, scratch: Scratch | None = None,
                   row: BlobRow | None = None, verified: dict[str, str] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        return self.vectors.load_slice(vec, lay, scratch=scratch, row=row, verified=verified)

    def blob_rows(self, shas: list[str]) -> dict[str, BlobRow]:
        return self.vectors.blob_rows(shas)

    def record_verified_blobs(self, verified: dict[str, str]) -> None:
        self.vectors.record_verified_blobs(verified)

    # --- scoring, recalibration, resolution, patching ---------------------------------

    def score_vector(self, ref: str, probes: Shots, *, target: str | Path | None = None, beta: float = 1.0,
                     device: str = "cpu", progress: Progress | None = None) -> VectorRecord:  # fmt: skip
        return self.recalibrator.score(ref, probes, target=target, beta=beta, device=device, progress=progress)

    def recalibrate(self, target: str | Path, vector: str, shots: Shots, *, layers: str | Sequence[int] = "auto",
                    settings: FitSettings | None = None, device: str = "cpu", use_cache: bool = True,
                    progress: Progress | None = None, target_hash: str | None = None) -> RecalibrationResult:  # fmt: skip
        return self.recalibrator.recalibrate(target, vector, shots, layers=layers, settings=settings, device=device,
                                             use_cache=use_cache, progress=progress, target_hash=target_hash)  # fmt: skip

    def coefficients_for(self, vec: VectorRecord, target: str | Path, spec: str, positions: list[int], *,
                         shots: Shots | None, settings: FitSettings | None, device: str,
                         progress: Progress | None, target_hash: str | None = None) -> dict[str, float]:  # fmt: skip
        return self.recalibrator.coefficients_for(vec, target, spec, positions, shots=shots, settings=settings,
                                                  device=device, progress=progress, target_hash=target_hash)  # fmt: skip

    def resolve(self, target: str | Path, *, limit: int = 10, include_incompatible: bool = False) -> list[Candidate]:
        return self.resolver.resolve(target, limit=limit, include_incompatible=include_incompatible)

    def resolve_registered(self, ref: str, *, limit: int = 10) -> list[Candidate]:
        return self.resolver.resolve_registered(ref, limit=limit)

    def recalibrations_of(self, vec: VectorRecord, *, limit: int = 100) -> list[RecalibrationRecord]:
        return self.catalog.recalibrations_of(vec.hash, limit=limit)

    def patches_of(self, vec: VectorRecord, *, offset: int = 0,
                   limit: int = 50) -> tuple[list[AuditRecord], dict[str, ModelName]]:  # fmt: skip
        """A page of the patch events naming ``vec``, newest first, and the registered models among their
        targets and outputs (name and role by hash)."""
        return self.audit.patches(vec.hash, offset=offset, limit=limit)

    def patch(self, target: str | Path, vector: str, out: str | Path, *, coefficients: str = "auto",
              layers: str | Sequence[int] = "auto", shots: Shots | None = None, settings: FitSettings | None = None,
              force: bool = False, device: str = "cpu", progress: Progress | None = None) -> PatchResult:  # fmt: skip
        return self.patcher.patch(target, vector, out, coefficients=coefficients, layers=layers, shots=shots,
                                  settings=settings, force=force, device=device, progress=progress)  # fmt: skip

    # --- exchange -------------------------------------------------------------------

    def export_bundle(self, ref: str, out: str | Path, *, sign_key: str | Path | None = None,
                      force: bool = False) -> BundleInfo:  # fmt: skip
        return self.exchange.export_bundle(ref, out, sign_key=sign_key, force=force)

    def import_bundle(self, path: str | Path, *, name: str | None = None, verify_key: str | Path | None = None,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> VectorRecord:  # fmt: skip
        return self.exchange.import_bundle(path, name=name, verify_key=verify_key, max_bytes=max_bytes)

    def verify_bundle(self, path: str | Path, *, verify_key: str | Path | None = None,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> BundleInfo:  # fmt: skip
        return self.exchange.verify_bundle(path, verify_key=verify_key, max_bytes=max_bytes)

    def export_peft(self, ref: str, out: str | Path, *, target: str | Path | None = None,
                    base: str | Path | None = None, rank: int | None = None, energy: float | None = None,
                    coefficients: Mapping[str, float] | None = None, skip_unsupported: bool = False,
                    force: bool = False, lossy: bool = False) -> PeftExport:  # fmt: skip
        return self.exchange.export_peft(ref, out, target=target, base=base, rank=rank, energy=energy,
                                         coefficients=coefficients, skip_unsupported=skip_unsupported,
                                         force=force, lossy=lossy)  # fmt: skip

    def import_peft(self, path: str | Path, *, name: str, base: str | Path) -> VectorRecord:
        return self.exchange.import_peft(path, name=name, base=base)

    # --- audit and integrity -----------------------------------------------------------

    def audit_log(self, *, model: str | None = None, vector: str | None = None, family: str | None = None,
                  kind: str | None = None, actor: str | None = None, since: str | None = None,
                  limit: int | None = None) -> list[AuditRecord]:  # fmt: skip
        return self.audit.events(model=model, vector=vector, family=family, kind=kind, actor=actor, since=since,
                                 limit=limit)  # fmt: skip

    def audit_page(self, *, model: str | None = None, vector: str | None = None, family: str | None = None,
                   kind: str | None = None, actor: str | None = None, since: str | None = None, offset: int = 0,
                   limit: int = 50, vector_hash: str | None = None) -> list[AuditRecord]:  # fmt: skip
        return self.audit.page(model=model, vector=vector, family=family, kind=kind, actor=actor, since=since,
                               offset=offset, limit=limit, vector_hash=vector_hash)  # fmt: skip

    def audit_show(self, ref: str) -> AuditRecord:
        return self.audit.show(ref)

    def audit_show_uid(self, uid: str) -> AuditRecord:
        return self.audit.show_uid(uid)

    def audit_verify(self, *, verify_key: str | Path | None = None) -> ChainReport:
        return self.audit.verify(verify_key=verify_key)

    def audit_head(self) -> dict[str, Any]:
        return self.audit.head()

    def identify(self, path: str | Path) -> Identification:
        return self.integrity.identify(path)

    def identify_hash(self, content_hash: str) -> Identification:
        return self.integrity.identify_hash(content_hash)

    def identify_headers(self, headers: list[bytes]) -> Identification:
        return self.integrity.identify_headers(headers)

    def verify(self, *, deep: bool = True, verify_key: str | Path | None = None) -> VerifyReport:
        return self.integrity.verify(deep=deep, verify_key=verify_key)

    def gc(self, *, dry_run: bool = False, temp_age_s: float = 3600.0) -> GcReport:
        return self.integrity.gc(dry_run=dry_run, temp_age_s=temp_age_s)

    # --- store -----------------------------------------------------------------------

    def migrate_store(self, to: str, *, dry_run: bool = False, progress: Progress | None = None) -> MigrationReport:
        """Copy every blob into the store ``to`` names, verified, then point the catalog at it.

        Resumable: blobs already there are skipped. The old store is left as it
        was (remove it once satisfied). Writers and gc wait meanwhile.

        Raises:
            InvalidInputError: the blobs are already there.
            IntegrityCheckError: a blob fails its check; the catalog is not switched.
        """
        target_url = location.canonical_url(to, self.home)
        source_url = location.canonical_url(self.store.url, self.home)
        if target_url == source_url:
            raise InvalidInputError(f"the blobs are already in {target_url}; nothing to migrate")
        target = self._open_store(target_url)
        target.probe()
        referenced = self.integrity.referenced_blobs()
        with self.store.collecting():
            blobs, copied, present, nbytes = copy_blobs(self.store, target, referenced=referenced,
                                                        dry_run=dry_run, progress=progress)  # fmt: skip
            if not dry_run:
                self.catalog.set_setting(location.SETTING, target_url)
        if not dry_run:
            self._wire(target)
        return MigrationReport(source_url, target_url, blobs, copied, present, nbytes, dry_run, not dry_run)

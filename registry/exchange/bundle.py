"""Exporting a vector from a registry into a bundle file, and importing one (the file: :mod:`.bundle_format`).

An export carries the vector, its family fingerprint, provenance, layer scores,
probe sets and blobs. An import verifies the whole file before the first write
(:func:`registry.exchange.bundle_format.read_verified`); then the blobs go to
the store and the rows to the catalog, under the store's writer lock.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .._version import __version__
from ..audit.chain import canonical_json
from ..audit.signing import load_key, public_hex
from ..catalog import models as m
from ..catalog.queries import check_name
from ..catalog.records import CheckpointRecord, VectorRecord
from ..catalog.service import Catalog, current_actor
from ..errors import AlreadyExistsError, IntegrityCheckError, NotFoundError
from ..evaluation.probes import Probe
from ..method.vectors import Vectors
from ..store import codec as _codec
from ..store.base import BlobInfo, Store, sha256_hex
from ._bundle_manifest import FORMAT, VERSION
from .bundle_format import DEFAULT_MAX_BYTES, BundleInfo, layer_summary, read_verified, write_bundle

# --------------------------------------------------------------------------- export


def export_bundle(catalog: Catalog, vectors: Vectors, ref: str, out: str | Path, *,
                  sign_key: str | Path | None = None, force: bool = False) -> BundleInfo:  # fmt: skip
    """Write one vector, its family fingerprint, provenance, scores and blobs into one file.

    Args:
        catalog: the family and probe-set rows.
        vectors: the vector and its blobs.
        ref: vector name or hash prefix.
        out: the bundle file (must not exist unless ``force``).
        sign_key: PEM file of an Ed25519 private key; the bundle then carries a
            signature over its manifest hash.
        force: replace an existing ``out``.

    Returns:
        What was written (manifest hash, signer, size, layers).

    Raises:
        AlreadyExistsError: ``out`` exists and ``force`` is false.
        IntegrityCheckError: a blob in the store is missing or corrupt.
        InvalidInputError: the key is not an Ed25519 private key.
    """
    out_path = Path(out)
    if out_path.exists() and (not force or out_path.is_dir()):
        raise AlreadyExistsError(f"{out_path} already exists; choose another OUT or pass --force")
    private = load_key(Path(sign_key), private=True) if sign_key is not None else None
    vec = vectors.get(ref)
    shas = list(dict.fromkeys(lay.blob for lay in vec.layers))
    blobs = [_blob_entry(vectors.store, sha) for sha in shas]
    manifest = _manifest(catalog, vec, blobs, public_hex(private) if private else None)
    body = canonical_json(manifest).encode("utf-8")

    def stored() -> Iterator[tuple[str, bytes]]:  # one blob in memory at a time
        for sha in shas:
            yield sha, bytes(vectors.store.read_stored(sha))

    mhash = write_bundle(out_path, body, stored(), private=private)
    return BundleInfo(str(out_path.resolve()), vec.name, vec.hash, mhash, manifest["signer"],
                      out_path.stat().st_size, layer_summary(manifest["layers"]))  # fmt: skip


def _blob_entry(store: Store, sha: str) -> dict[str, Any]:
    stored = bytes(store.read_stored(sha))
    payload = _codec.decode(stored)
    if sha256_hex(payload) != sha:
        raise IntegrityCheckError(f"blob {sha[:12]} is corrupt in the store; run `safegene verify`")
    return {"sha256": sha, "codec": _codec.codec_name(stored), "raw_size": len(payload), "stored_size": len(stored),
            "stored_sha256": sha256_hex(stored)}  # fmt: skip


def _manifest(catalog: Catalog, vec: VectorRecord, blobs: list[dict[str, Any]], signer: str | None) -> dict[str, Any]:
    probe_hashes = sorted({lay.probe_set for lay in vec.layers if lay.probe_set})

    def q(session: Session) -> tuple[m.Family, list[m.ProbeSet]]:
        fam = session.get(m.Family, vec.family)
        assert fam is not None  # a foreign key of the vector row
        sets = list(session.scalars(select(m.ProbeSet).where(m.ProbeSet.hash.in_(probe_hashes))))
        return fam, sets

    fam, sets = catalog.read(q)
    layers = [lay.to_json() for lay in vec.layers]  # position, index, label, tensor_names, blob, norm, scores…
    return {
        "format": FORMAT, "version": VERSION, "tool_version": __version__, "exported_by": current_actor(),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "vector": {"name": vec.name, "hash": vec.hash, "encoding": vec.encoding, "tensor_scope": vec.tensor_scope,
                   "meta": vec.meta, "created_by": vec.created_by, "created_at": vec.created_at},
        "family": {"id": fam.id, "key": json.loads(fam.key_json), "manifest_hash": fam.manifest_hash,
                   "layer_templates": json.loads(fam.layer_templates)},
        "provenance": {"aligned": vec.aligned, "degraded": vec.degraded},
        "layers": layers, "blobs": blobs, "signer": signer,
        "probe_sets": [{"hash": p.hash, "content": json.loads(p.content)} for p in sets],
    }  # fmt: skip


# --------------------------------------------------------------------------- import


def import_bundle(catalog: Catalog, vectors: Vectors, path: str | Path, *, name: str | None = None,
                  verify_key: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> VectorRecord:  # fmt: skip
    """Verify a bundle completely, then register its family, blobs, vector and layers.

    Importing the same bundle again returns the registered vector (no new rows or events).

    Args:
        catalog: family, probe-set and source-checkpoint rows.
        vectors: registers the vector; its store receives the blobs.
        path: the bundle file.
        name: catalog name (default: the name in the bundle).
        verify_key: PEM file of the Ed25519 public key that must have signed the bundle.
        max_bytes: refuse bundles whose blobs decode to more bytes than this in all.

    Returns:
        The vector record (layer scores and selection as exported).

    Raises:
        InvalidInputError: not a bundle, unsafe entry names, sizes that lie, limits exceeded.
        IntegrityCheckError: any hash, the signature or the vector's content does not verify.
        AlreadyExistsError: the vector is registered under another name, or the name is taken.
    """
    p = Path(path)
    ver = read_verified(p, verify_key=verify_key, max_bytes=max_bytes)
    man, vec = ver.manifest, ver.manifest["vector"]
    final = check_name(name or vec["name"], "vector name")
    existing = catalog.read(lambda s: s.scalar(select(m.Vector.name).where(m.Vector.hash == vec["hash"])))
    if existing is not None:
        if existing == final:
            return vectors.get(vec["hash"])
        raise AlreadyExistsError(f"this vector is already registered as {existing!r} (hash {vec['hash'][:12]}); "
                                 f"import it with --name {existing} or use that name")  # fmt: skip
    vectors.check_name_free(final)
    prov = man["provenance"]
    meta = {**vec["meta"], "source": "bundle", "bundle": {"manifest_hash": ver.info.manifest_hash,
            "signer": ver.info.signer, "exported_from": vec["name"], "provenance": prov}}  # fmt: skip

    def prepare(session: Session) -> None:
        _ensure_family(session, man["family"])
        for ps in man["probe_sets"]:
            if session.get(m.ProbeSet, ps["hash"]) is None:
                probes = [Probe(o["prompt"], o["kind"], o.get("response")).to_json() for o in ps["content"]]
                session.add(m.ProbeSet(hash=ps["hash"], num_probes=len(probes), content=json.dumps(probes)))
        session.flush()

    with vectors.store.writing():  # gc waits until the rows reference the blobs written or reused here
        infos = {b["sha256"]: _install_blob(vectors.store, p, b, ver.blobs[b["sha256"]]) for b in man["blobs"]}
        layers = [{"position": lay["position"], "index": lay["index"], "label": lay["label"],
                   "names": lay["tensor_names"], "blob": infos[lay["blob"]], "norm": float(lay["norm"]),
                   "score": lay["score"], "safety_gain": lay["safety_gain"], "task_cost": lay["task_cost"],
                   "selected": lay["selected"], "probe_set": lay["probe_set"]} for lay in man["layers"]]  # fmt: skip
        return vectors.register(
            final, man["family"]["id"], _known(catalog, prov["aligned"]), _known(catalog, prov["degraded"]),
            vec["encoding"], vec["tensor_scope"], layers, meta, prepare=prepare,
            event_extra={"source": "bundle", "aligned": prov["aligned"], "degraded": prov["degraded"],
                         "bundle": ver.info.manifest_hash, "signer": ver.info.signer})  # fmt: skip


def _install_blob(store: Store, path: Path, blob: dict[str, Any], where: tuple[int, int, str]) -> BlobInfo:
    offset, size, stored_sha = where
    with open(path, "rb") as fh:
        fh.seek(offset)
        stored = fh.read(size)
    if sha256_hex(stored) != stored_sha:  # the file changed since it was verified
        raise IntegrityCheckError(f"{path}: blob {blob['sha256'][:12]} changed while importing; nothing registered")
    # these bytes decoded to the payload named sha when the bundle was verified
    return store.install(blob["sha256"], stored, codec=blob["codec"], raw_size=blob["raw_size"])


def _ensure_family(session: Session, fam: dict[str, Any]) -> None:
    if session.get(m.Family, fam["id"]) is not None:
        return
    key = fam["key"]
    session.add(m.Family(id=fam["id"], model_type=key["model_type"], architecture=key["architecture"],
                         num_layers=key["num_layers"], hidden_size=key["hidden"], vocab_size=key["vocab"],
                         key_json=json.dumps(key, sort_keys=True), manifest_hash=fam["manifest_hash"],
                         layer_templates=json.dumps(fam["layer_templates"])))  # fmt: skip
    session.flush()


def _known(catalog: Catalog, digest: str | None) -> CheckpointRecord | None:
    if digest is None:
        return None
    try:
        return catalog.get_model(digest)
    except NotFoundError:
        return None

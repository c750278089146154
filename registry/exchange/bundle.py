"""Portable vector bundles: one file that carries a vector between registries.

Layout (every byte is checked on import; nothing is extracted to paths)::

    bundle    := MAGIC VERSION entry*                    (the file ends right after the last entry)
    MAGIC     := b"SGBUNDLE"                             8 bytes
    VERSION   := u32 little-endian, 1
    entry     := u16 name length | name (UTF-8) | u64 size | data[size]

    entries, in this order:
    manifest.json        canonical JSON (sorted keys, no spaces, UTF-8): format, vector
                         (name, hash, encoding, scope, meta), family (id, key, manifest hash,
                         layer templates), provenance (aligned/degraded hashes), layers (label,
                         index, tensor names, blob, norm, scores, selection, probe set), probe
                         sets, blobs (sha256, codec, raw/stored size, sha256 of the stored bytes),
                         signer (hex Ed25519 public key or null)
    manifest.sha256      64 hex digits: sha256 of the manifest bytes (the manifest hash)
    blobs/<sha256>       one per manifest blob, in manifest order: the encoded blob exactly as
                         stored (registry.codec); <sha256> names the decoded payload
    signature.ed25519    only when signer is set: 64-byte Ed25519 signature of
                         b"safegene-bundle-v1\\n" + manifest hash (hex)

Import verifies everything before the first write: magic, entry names (no
``..``, no absolute or odd paths), sizes against the file and the manifest,
the manifest hash and canonical form, the signature (against the manifest's
signer, and against ``verify_key`` when given), every blob's stored hash,
decoded size (capped: no zstd bombs) and payload hash, the tensors in every
slice, the vector hash from the layers, the family id from its key and every
probe set hash. Then blobs go to the store and rows to the catalog.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import __version__
from ..api import Registry, current_actor
from ..audit.chain import canonical_json
from ..audit.signing import _ed25519
from ..audit.signing import load_key as _load_key
from ..audit.signing import public_hex as _public_hex
from ..catalog import models as m
from ..catalog.queries import check_name
from ..catalog.records import CheckpointRecord, VectorRecord
from ..errors import (
    AlreadyExistsError,
    IntegrityCheckError,
    InvalidInputError,
    NotFoundError,
)
from ..evaluation.probes import Probe
from ..store import codec as _codec
from ..store.blobs import BlobInfo, atomic_write, fsync_path, sha256_hex
from ._bundle_manifest import (
    FORMAT,
    VERSION,
    Slice,
    check_blob,
    check_blob_list,
    check_layers,
    parse_manifest,
)

MAGIC = b"SGBUNDLE"
MANIFEST, MANIFEST_HASH, SIGNATURE, BLOB_PREFIX = "manifest.json", "manifest.sha256", "signature.ed25519", "blobs/"
SIGN_CONTEXT = b"safegene-bundle-v1\n"
MAX_MANIFEST_BYTES = 64 << 20
DEFAULT_MAX_BYTES = 1 << 41  # 2 TiB of decoded payload in all
_HEAD = struct.Struct("<8sI")
_NAME_LEN, _SIZE = struct.Struct("<H"), struct.Struct("<Q")
_SAFE_ENTRY = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*$")


@dataclass(frozen=True)
class BundleInfo:
    """A bundle written by :func:`export_bundle` or checked by :func:`verify_bundle`."""

    path: str
    vector: str
    hash: str
    manifest_hash: str
    signer: str | None
    size: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    format: str = "bundle"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Verified:
    info: BundleInfo
    manifest: dict[str, Any]
    blobs: dict[str, tuple[int, int, str]]  # sha -> (offset, size, sha256 of stored bytes)


# --------------------------------------------------------------------------- export


def export_bundle(reg: Registry, ref: str, out: str | Path, *, sign_key: str | Path | None = None,
                  force: bool = False) -> BundleInfo:  # fmt: skip
    """Write one vector, its family fingerprint, provenance, scores and blobs into one file.

    Args:
        reg: the registry.
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
    private = _load_key(Path(sign_key), private=True) if sign_key is not None else None
    vec = reg.get_vector(ref)
    shas = list(dict.fromkeys(lay.blob for lay in vec.layers))
    blobs = [_blob_entry(reg, sha) for sha in shas]
    manifest = _manifest(reg, vec, blobs, _public_hex(private) if private else None)
    body = canonical_json(manifest).encode("utf-8")
    mhash = sha256_hex(body)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.parent / f".{out_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(_HEAD.pack(MAGIC, VERSION))
            _write_entry(fh, MANIFEST, body)
            _write_entry(fh, MANIFEST_HASH, mhash.encode())
            for sha in shas:
                _write_entry(fh, BLOB_PREFIX + sha, reg.store.path_for(sha).read_bytes())
            if private is not None:
                _write_entry(fh, SIGNATURE, private.sign(SIGN_CONTEXT + mhash.encode()))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
        fsync_path(out_path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return BundleInfo(str(out_path.resolve()), vec.name, vec.hash, mhash, manifest["signer"],
                      out_path.stat().st_size, _layer_summary(manifest["layers"]))  # fmt: skip


def _blob_entry(reg: Registry, sha: str) -> dict[str, Any]:
    try:
        stored = reg.store.path_for(sha).read_bytes()
    except FileNotFoundError:
        raise IntegrityCheckError(f"blob {sha[:12]} is missing from the store; run `safegene verify`") from None
    payload = _codec.decode(stored)
    if sha256_hex(payload) != sha:
        raise IntegrityCheckError(f"blob {sha[:12]} is corrupt in the store; run `safegene verify`")
    return {"sha256": sha, "codec": _codec.codec_name(stored), "raw_size": len(payload), "stored_size": len(stored),
            "stored_sha256": sha256_hex(stored)}  # fmt: skip


def _manifest(reg: Registry, vec: VectorRecord, blobs: list[dict[str, Any]], signer: str | None) -> dict[str, Any]:
    probe_hashes = sorted({lay.probe_set for lay in vec.layers if lay.probe_set})

    def q(session: Session) -> tuple[m.Family, list[m.ProbeSet]]:
        fam = session.get(m.Family, vec.family)
        assert fam is not None  # a foreign key of the vector row
        sets = list(session.scalars(select(m.ProbeSet).where(m.ProbeSet.hash.in_(probe_hashes))))
        return fam, sets

    fam, sets = reg.read(q)
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


def _write_entry(fh: IO[bytes], name: str, data: bytes) -> None:
    raw = name.encode("utf-8")
    fh.write(_NAME_LEN.pack(len(raw)) + raw + _SIZE.pack(len(data)))
    fh.write(data)


def _layer_summary(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: lay[k] for k in ("index", "label", "blob", "score", "selected")} for lay in layers]


# --------------------------------------------------------------------------- keys


def _check_signature(signer: str, signature: bytes, mhash: str) -> None:
    _, ed = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        ed.Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer)).verify(signature, SIGN_CONTEXT + mhash.encode())
    except (InvalidSignature, ValueError):
        raise IntegrityCheckError(f"the bundle's signature does not verify with its signer key {signer[:16]}…; "
                                  "the bundle was altered") from None  # fmt: skip


# --------------------------------------------------------------------------- reading and verifying


def _entries(fh: IO[bytes], total: int) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each entry; names and sizes checked against the file."""
    pos = _HEAD.size
    while pos < total:
        if total - pos < _NAME_LEN.size:
            raise InvalidInputError(f"bundle is truncated at byte {pos}")
        (n,) = _NAME_LEN.unpack(fh.read(_NAME_LEN.size))
        if n == 0 or total - pos - _NAME_LEN.size < n + _SIZE.size:
            raise InvalidInputError(f"bundle entry at byte {pos} has a bad name length ({n})")
        try:
            name = fh.read(n).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"bundle entry at byte {pos} has a name that is not UTF-8") from None
        if not _SAFE_ENTRY.match(name):
            raise InvalidInputError(f"bundle entry {name[:80]!r} has an unsafe name (absolute path, '..' "
                                    "or odd characters); refusing the bundle")  # fmt: skip
        (size,) = _SIZE.unpack(fh.read(_SIZE.size))
        start = pos + _NAME_LEN.size + n + _SIZE.size
        if size > total - start:
            raise InvalidInputError(f"bundle entry {name!r} claims {size} bytes, only {total - start} remain")
        yield name, start, size
        pos = start + size
        fh.seek(pos)


def verify_bundle(path: str | Path, *, verify_key: str | Path | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> BundleInfo:  # fmt: skip
    """Check a bundle completely without writing anything.

    Args:
        path: the bundle file.
        verify_key: PEM file of the Ed25519 public key that must have signed it.
        max_bytes: refuse bundles whose blobs decode to more bytes than this in all.

    Returns:
        What the bundle holds.

    Raises:
        InvalidInputError: not a bundle, unsafe entry names, sizes that lie, limits exceeded.
        IntegrityCheckError: a hash, the signature or the vector's content does not verify.
    """
    return _verify(Path(path), verify_key, max_bytes).info


def _verify(path: Path, verify_key: str | Path | None, max_bytes: int) -> _Verified:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such bundle file")
    expected_key = _public_hex(_load_key(Path(verify_key), private=False)) if verify_key is not None else None
    total = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(_HEAD.size)
        if len(head) < _HEAD.size or _HEAD.unpack(head) != (MAGIC, VERSION):
            raise InvalidInputError(f"{path}: not a SafeGene bundle (version {VERSION})")
        entries = _entries(fh, total)
        body = _read_entry(fh, next(entries, None), MANIFEST, MAX_MANIFEST_BYTES)
        recorded = _read_entry(fh, next(entries, None), MANIFEST_HASH, 64).decode("ascii", "replace")
        mhash = sha256_hex(body)
        if recorded != mhash:
            raise IntegrityCheckError(f"{path}: the manifest does not match its recorded hash; the bundle was altered")
        man = parse_manifest(body)
        check_blob_list(man, max_bytes)
        signer = man["signer"]
        if expected_key is not None and signer != expected_key:
            raise IntegrityCheckError("the bundle is not signed" if signer is None else
                                      f"the bundle is signed by {signer[:16]}…, not by the --verify-key")  # fmt: skip
        offsets: dict[str, tuple[int, int, str]] = {}
        tensors: dict[str, Slice] = {}  # only shapes and norms: one decoded blob in memory at a time
        for blob in man["blobs"]:
            entry = next(entries, None)
            stored = _read_entry(fh, entry, BLOB_PREFIX + blob["sha256"], blob["stored_size"])
            tensors[blob["sha256"]] = check_blob(blob, stored)
            assert entry is not None
            offsets[blob["sha256"]] = (entry[1], entry[2], blob["stored_sha256"])
        if signer is not None:
            _check_signature(signer, _read_entry(fh, next(entries, None), SIGNATURE, 64), mhash)
        extra = next(entries, None)
        if extra is not None:
            raise InvalidInputError(f"{path}: unexpected entry {extra[0]!r} after the last one")
    check_layers(man, tensors)
    info = BundleInfo(str(path.resolve()), man["vector"]["name"], man["vector"]["hash"], mhash, signer, total,
                      _layer_summary(man["layers"]))  # fmt: skip
    return _Verified(info, man, offsets)


def _read_entry(fh: IO[bytes], entry: tuple[str, int, int] | None, name: str, size: int) -> bytes:
    if entry is None:
        raise InvalidInputError(f"bundle is truncated: entry {name!r} is missing")
    got, _, got_size = entry
    if got != name:
        raise InvalidInputError(f"bundle entry {got[:80]!r} found where {name[:80]!r} belongs")
    if got_size > size or (name != MANIFEST and got_size != size):
        raise InvalidInputError(f"bundle entry {name!r} is {got_size} bytes; the manifest allows {size}")
    return fh.read(got_size)


# --------------------------------------------------------------------------- import


def import_bundle(reg: Registry, path: str | Path, *, name: str | None = None, verify_key: str | Path | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> VectorRecord:  # fmt: skip
    """Verify a bundle completely, then register its family, blobs, vector and layers.

    Importing the same bundle again returns the registered vector (no new rows or events).

    Args:
        reg: the registry.
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
    ver = _verify(p, verify_key, max_bytes)
    man, vec = ver.manifest, ver.manifest["vector"]
    final = check_name(name or vec["name"], "vector name")
    existing = reg.read(lambda s: s.scalar(select(m.Vector.name).where(m.Vector.hash == vec["hash"])))
    if existing is not None:
        if existing == final:
            return reg.get_vector(vec["hash"])
        raise AlreadyExistsError(f"this vector is already registered as {existing!r} (hash {vec['hash'][:12]}); "
                                 f"import it with --name {existing} or use that name")  # fmt: skip
    reg._check_vector_name_free(final)
    infos = {b["sha256"]: _install_blob(reg, p, b, ver.blobs[b["sha256"]]) for b in man["blobs"]}
    layers = [{"position": lay["position"], "index": lay["index"], "label": lay["label"], "names": lay["tensor_names"],
               "blob": infos[lay["blob"]], "norm": float(lay["norm"]), "score": lay["score"],
               "safety_gain": lay["safety_gain"], "task_cost": lay["task_cost"], "selected": lay["selected"],
               "probe_set": lay["probe_set"]} for lay in man["layers"]]  # fmt: skip
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

    return reg._register_vector(
        final, man["family"]["id"], _known(reg, prov["aligned"]), _known(reg, prov["degraded"]), vec["encoding"],
        vec["tensor_scope"], layers, meta, prepare=prepare,
        event_extra={"source": "bundle", "aligned": prov["aligned"], "degraded": prov["degraded"],
                     "bundle": ver.info.manifest_hash, "signer": ver.info.signer})  # fmt: skip


def _install_blob(reg: Registry, path: Path, blob: dict[str, Any], where: tuple[int, int, str]) -> BlobInfo:
    offset, size, stored_sha = where
    with open(path, "rb") as fh:
        fh.seek(offset)
        stored = fh.read(size)
    if sha256_hex(stored) != stored_sha:  # the file changed since it was verified
        raise IntegrityCheckError(f"{path}: blob {blob['sha256'][:12]} changed while importing; nothing registered")
    sha = blob["sha256"]
    if reg.store.exists(sha):
        return BlobInfo(sha, blob["codec"], blob["raw_size"], blob["stored_size"])
    reg.store.ensure()
    target = reg.store.path_for(sha)
    target.parent.mkdir(exist_ok=True)
    atomic_write(target, stored, tmp_dir=reg.store.tmp_dir)
    # these bytes decoded to the payload named sha when the bundle was verified
    return BlobInfo(sha, blob["codec"], blob["raw_size"], blob["stored_size"], stored_sha)


def _ensure_family(session: Session, fam: dict[str, Any]) -> None:
    if session.get(m.Family, fam["id"]) is not None:
        return
    key = fam["key"]
    session.add(m.Family(id=fam["id"], model_type=key["model_type"], architecture=key["architecture"],
                         num_layers=key["num_layers"], hidden_size=key["hidden"], vocab_size=key["vocab"],
                         key_json=json.dumps(key, sort_keys=True), manifest_hash=fam["manifest_hash"],
                         layer_templates=json.dumps(fam["layer_templates"])))  # fmt: skip
    session.flush()


def _known(reg: Registry, digest: str | None) -> CheckpointRecord | None:
    if digest is None:
        return None
    try:
        return reg.get_model(digest)
    except NotFoundError:
        return None

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
import math
import os
import re
import secrets
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import __version__
from . import codec as _codec
from . import models as m
from ._catalog import check_name
from .api import Registry, current_actor
from .audit import canonical_json
from .checkpoint import check_tensor_name
from .errors import (
    AlreadyExistsError,
    IntegrityCheckError,
    InvalidCheckpointError,
    InvalidInputError,
    NotFoundError,
)
from .family import FamilyKey, layer_of
from .probes import KINDS, Probe, probes_hash
from .records import CheckpointRecord, VectorRecord
from .signing import _ed25519
from .signing import load_key as _load_key
from .signing import public_hex as _public_hex
from .store import BlobInfo, atomic_write, fsync_path, sha256_hex
from .vectors import ENCODINGS, EXTRA_LABEL, SCOPES, decode_slice, vector_hash

MAGIC = b"SGBUNDLE"
VERSION = 1
FORMAT = "safegene-bundle"
MANIFEST, MANIFEST_HASH, SIGNATURE, BLOB_PREFIX = "manifest.json", "manifest.sha256", "signature.ed25519", "blobs/"
SIGN_CONTEXT = b"safegene-bundle-v1\n"
MAX_MANIFEST_BYTES = 64 << 20
DEFAULT_MAX_BYTES = 1 << 41  # 2 TiB of decoded payload in all
_HEAD = struct.Struct("<8sI")
_NAME_LEN, _SIZE = struct.Struct("<H"), struct.Struct("<Q")
_SAFE_ENTRY = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_Slice = tuple[dict[str, list[int]], float]  # a verified blob: tensor shapes, L2 norm
_KEY_TYPES = {"model_type": str, "architecture": str, "num_layers": int, "hidden": int, "vocab": int,
              "intermediate": (int, type(None)), "heads": (int, type(None)), "kv_heads": (int, type(None)),
              "head_dim": (int, type(None)), "tied_embeddings": bool}  # fmt: skip


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
    return {"sha256": sha, "codec": _codec_name(stored), "raw_size": len(payload), "stored_size": len(stored),
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


def _codec_name(stored: bytes) -> str:
    by_id = {c.codec_id: c.name for c in _codec.CODECS.values()}
    return by_id.get(stored[4], "unknown") if len(stored) > 4 else "unknown"


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
        man = _parse_manifest(body)
        _check_blob_list(man, max_bytes)
        signer = man["signer"]
        if expected_key is not None and signer != expected_key:
            raise IntegrityCheckError("the bundle is not signed" if signer is None else
                                      f"the bundle is signed by {signer[:16]}…, not by the --verify-key")  # fmt: skip
        offsets: dict[str, tuple[int, int, str]] = {}
        tensors: dict[str, _Slice] = {}  # only shapes and norms: one decoded blob in memory at a time
        for blob in man["blobs"]:
            entry = next(entries, None)
            stored = _read_entry(fh, entry, BLOB_PREFIX + blob["sha256"], blob["stored_size"])
            tensors[blob["sha256"]] = _check_blob(blob, stored)
            assert entry is not None
            offsets[blob["sha256"]] = (entry[1], entry[2], blob["stored_sha256"])
        if signer is not None:
            _check_signature(signer, _read_entry(fh, next(entries, None), SIGNATURE, 64), mhash)
        extra = next(entries, None)
        if extra is not None:
            raise InvalidInputError(f"{path}: unexpected entry {extra[0]!r} after the last one")
    _check_layers(man, tensors)
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


def _no_nan(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def _parse_manifest(body: bytes) -> dict[str, Any]:
    try:
        man = json.loads(body.decode("utf-8"), parse_constant=_no_nan)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"bundle manifest is not valid JSON ({exc})") from None
    if not isinstance(man, dict) or canonical_json(man).encode("utf-8") != body:
        raise InvalidInputError("bundle manifest is not a canonical JSON object")
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise InvalidInputError(f"bundle manifest is not {FORMAT} version {VERSION}")
    _need(man, {"vector": dict, "family": dict, "provenance": dict, "layers": list, "blobs": list,
                "probe_sets": list, "signer": (str, type(None))}, "manifest")  # fmt: skip
    if man["signer"] is not None and not _HEX64.match(man["signer"]):
        raise InvalidInputError("bundle manifest: signer is not a hex Ed25519 public key")
    return man


def _need(obj: Any, spec: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidInputError(f"bundle {where}: expected an object")
    for key, types in spec.items():
        value = obj.get(key)
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise InvalidInputError(f"bundle {where}: {key!r} is missing or of the wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"bundle {where}: {key!r} is not finite")


def _check_blob_list(man: dict[str, Any], max_bytes: int) -> None:
    total, seen = 0, set()
    for b in man["blobs"]:
        _need(b, {"sha256": str, "codec": str, "raw_size": int, "stored_size": int, "stored_sha256": str}, "blob")
        if not (_HEX64.match(b["sha256"]) and _HEX64.match(b["stored_sha256"])) or b["sha256"] in seen:
            raise InvalidInputError("bundle manifest: a blob hash is malformed or listed twice")
        if b["raw_size"] < 0 or b["stored_size"] < 0:
            raise InvalidInputError("bundle manifest: negative blob size")
        if b["codec"] not in _codec.CODECS:  # before any blob is read: a newer writer's codec, not damage
            raise InvalidInputError(f"bundle blob {b['sha256'][:12]} is stored with codec {b['codec'][:40]!r}, which "
                                    f"this version of safegene ({__version__}) cannot read; upgrade safegene")  # fmt: skip
        seen.add(b["sha256"])
        total += b["raw_size"]
    if total > max_bytes:
        raise InvalidInputError(f"bundle blobs decode to {total} bytes, more than the {max_bytes} allowed")


def _check_blob(blob: dict[str, Any], stored: bytes) -> _Slice:
    sha = blob["sha256"]
    if sha256_hex(stored) != blob["stored_sha256"]:
        raise IntegrityCheckError(f"bundle blob {sha[:12]}: stored bytes do not match the manifest (altered)")
    try:
        payload = _codec.decode(stored, max_size=blob["raw_size"])  # caps decompression: no zstd bombs
    except IntegrityCheckError as exc:
        raise IntegrityCheckError(f"bundle blob {sha[:12]}: {exc}") from None
    if len(payload) != blob["raw_size"] or sha256_hex(payload) != sha or _codec_name(stored) != blob["codec"]:
        raise IntegrityCheckError(f"bundle blob {sha[:12]}: decoded content does not match its name or size")
    try:
        tensors = decode_slice(payload)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own untyped errors
        raise InvalidInputError(f"bundle blob {sha[:12]} is not a safetensors slice ({exc})") from None
    for name, t in tensors.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise InvalidInputError(f"bundle blob {sha[:12]}: {name[:80]} is not finite floating point")
    norm = math.sqrt(sum(float((t.float() ** 2).sum()) for t in tensors.values()))
    return {n: list(t.shape) for n, t in tensors.items()}, norm


def _check_layers(man: dict[str, Any], tensors: dict[str, _Slice]) -> None:
    vec, fam, layers = man["vector"], man["family"], man["layers"]
    _need(vec, {"name": str, "hash": str, "encoding": str, "tensor_scope": str, "meta": dict}, "vector")
    _need(fam, {"id": str, "key": dict, "manifest_hash": str, "layer_templates": list}, "family")
    check_name(vec["name"], "bundle vector name")
    if vec["encoding"] not in ENCODINGS or vec["tensor_scope"] not in SCOPES:
        raise InvalidInputError("bundle vector: unknown encoding or scope")
    _need(fam["key"], _KEY_TYPES, "family key")
    if set(fam["key"]) != set(_KEY_TYPES) or FamilyKey(**fam["key"]).id != fam["id"]:
        raise IntegrityCheckError("bundle family id does not match its key")
    if not _HEX64.match(fam["manifest_hash"]) or not all(isinstance(t, str) for t in fam["layer_templates"]):
        raise InvalidInputError("bundle family: malformed manifest hash or layer templates")
    prov = man["provenance"]
    if set(prov) != {"aligned", "degraded"} or not all(v is None or (isinstance(v, str) and _HEX64.match(v))
                                                       for v in prov.values()):  # fmt: skip
        raise InvalidInputError("bundle provenance: expected aligned/degraded checkpoint hashes or null")
    probe_sets = {_check_probe_set(p) for p in man["probe_sets"]}
    shapes = vec["meta"].get("shapes")
    if not isinstance(shapes, dict):
        raise InvalidInputError("bundle vector meta has no tensor shapes")
    carried: dict[str, list[int]] = {}
    for pos, lay in enumerate(layers):
        _check_layer(lay, pos, tensors, probe_sets)
        for n in lay["tensor_names"]:
            carried[n] = tensors[lay["blob"]][0][n]
    if not layers or carried != shapes:
        raise IntegrityCheckError("bundle vector meta shapes do not match the tensors its blobs carry")
    if {lay["blob"] for lay in layers} != set(tensors):
        raise InvalidInputError("bundle carries blobs no layer uses")
    if vector_hash([(lay["label"], lay["blob"]) for lay in layers]) != vec["hash"]:
        raise IntegrityCheckError("bundle vector hash does not recompute from its layers")


def _check_layer(lay: Any, pos: int, tensors: dict[str, _Slice], probe_sets: set[str]) -> None:
    _need(lay, {"position": int, "label": str, "tensor_names": list, "blob": str, "norm": (int, float),
                "selected": bool, "index": (int, type(None)), "probe_set": (str, type(None))}, "layer")  # fmt: skip
    for key in ("score", "safety_gain", "task_cost"):
        v = lay.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
            raise InvalidInputError(f"bundle layer {pos}: {key} is not a finite number")
    if lay["position"] != pos or lay["blob"] not in tensors or (lay["probe_set"] and lay["probe_set"] not in probe_sets):
        raise InvalidInputError(f"bundle layer {pos}: position, blob or probe set does not match the manifest")
    try:
        names = [check_tensor_name(n, "bundle") for n in lay["tensor_names"]]
    except InvalidCheckpointError as exc:
        raise InvalidInputError(f"bundle layer {pos}: {exc.reason}") from None
    idx = lay["index"]
    blocks = {hit[0] if (hit := layer_of(n)) else None for n in names}
    if blocks != {idx} or (idx is None) != (lay["label"] == EXTRA_LABEL) or len(lay["label"]) > 200:
        raise InvalidInputError(f"bundle layer {pos}: label, index and tensor names disagree")
    shapes, norm = tensors[lay["blob"]]
    if sorted(shapes) != sorted(names):
        raise IntegrityCheckError(f"bundle layer {pos}: its blob holds other tensors than the manifest lists")
    if not math.isclose(norm, lay["norm"], rel_tol=1e-5, abs_tol=1e-9):
        raise IntegrityCheckError(f"bundle layer {pos}: recorded norm does not match its tensors")


def _check_probe_set(p: Any) -> str:
    _need(p, {"hash": str, "content": list}, "probe set")
    for o in p["content"]:
        _need(o, {"prompt": str, "kind": str}, "probe")
        if o["kind"] not in KINDS or not isinstance(o.get("response", ""), str) or set(o) - {"prompt", "kind", "response"}:
            raise InvalidInputError("bundle probe set: malformed probe")
    probes = [Probe(prompt=o["prompt"], kind=o["kind"], response=o.get("response")) for o in p["content"]]
    if probes_hash(probes) != p["hash"]:
        raise IntegrityCheckError("bundle probe set content does not match its hash")
    return str(p["hash"])


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

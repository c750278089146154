"""The bundle file: one file that carries a vector between registries (its layout, writing and checking).

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

import os
import re
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..audit.signing import load_key as _load_key
from ..audit.signing import public_hex as _public_hex
from ..audit.signing import signature_ok
from ..errors import IntegrityCheckError, InvalidInputError
from ..store.blobs import fsync_path, sha256_hex
from ._bundle_manifest import (
    VERSION,
    Slice,
    check_blob,
    check_blob_list,
    check_declared_sizes,
    check_layers,
    parse_manifest,
)

MAGIC = b"SGBUNDLE"
MANIFEST, MANIFEST_HASH, SIGNATURE, BLOB_PREFIX = "manifest.json", "manifest.sha256", "signature.ed25519", "blobs/"
SIGN_CONTEXT = b"safegene-bundle-v1\n"
MAX_MANIFEST_BYTES = 64 << 20
DEFAULT_MAX_BYTES = 64 << 30  # 64 GiB of decoded payload in all: a 7B model's fp32 block deltas fit twice; larger ones pass --max-bytes
_HEAD = struct.Struct("<8sI")
_NAME_LEN, _SIZE = struct.Struct("<H"), struct.Struct("<Q")
_SAFE_ENTRY = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*$")


@dataclass(frozen=True)
class BundleInfo:
    """A bundle written by an export or checked by :func:`verify_bundle`."""

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
class VerifiedBundle:
    """A bundle checked completely: what it holds, its manifest, and where each blob's bytes are."""

    info: BundleInfo
    manifest: dict[str, Any]
    blobs: dict[str, tuple[int, int, str]]  # sha -> (offset, size, sha256 of stored bytes)


# --------------------------------------------------------------------------- writing


def write_bundle(out: Path, body: bytes, blobs: Iterable[tuple[str, bytes]], *, private: Any = None) -> str:
    """Write a bundle file atomically (temp file, fsync, rename); returns the manifest hash.

    Args:
        out: the bundle file (replaced if it exists).
        body: the canonical manifest bytes.
        blobs: ``(sha256, stored bytes)`` of each manifest blob, in manifest order.
        private: an Ed25519 private key: the bundle then carries a signature over the manifest hash.
    """
    mhash = sha256_hex(body)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(_HEAD.pack(MAGIC, VERSION))
            _write_entry(fh, MANIFEST, body)
            _write_entry(fh, MANIFEST_HASH, mhash.encode())
            for sha, stored in blobs:
                _write_entry(fh, BLOB_PREFIX + sha, stored)
            if private is not None:
                _write_entry(fh, SIGNATURE, private.sign(SIGN_CONTEXT + mhash.encode()))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        fsync_path(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return mhash


def _write_entry(fh: IO[bytes], name: str, data: bytes) -> None:
    raw = name.encode("utf-8")
    fh.write(_NAME_LEN.pack(len(raw)) + raw + _SIZE.pack(len(data)))
    fh.write(data)


def layer_summary(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a :class:`BundleInfo` lists of each manifest layer."""
    return [{k: lay[k] for k in ("index", "label", "blob", "score", "selected")} for lay in layers]


# --------------------------------------------------------------------------- reading and verifying


def _check_signature(signer: str, signature: bytes, mhash: str) -> None:
    if not signature_ok(signer, signature, SIGN_CONTEXT + mhash.encode()):
        raise IntegrityCheckError(f"the bundle's signature does not verify with its signer key {signer[:16]}…; "
                                  "the bundle was altered") from None  # fmt: skip


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
    return read_verified(Path(path), verify_key=verify_key, max_bytes=max_bytes).info


def read_verified(path: Path, *, verify_key: str | Path | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> VerifiedBundle:  # fmt: skip
    """Check a bundle completely (see :func:`verify_bundle`) and say where its blobs' bytes are."""
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
        check_declared_sizes(man)
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
                      layer_summary(man["layers"]))  # fmt: skip
    return VerifiedBundle(info, man, offsets)


def _read_entry(fh: IO[bytes], entry: tuple[str, int, int] | None, name: str, size: int) -> bytes:
    if entry is None:
        raise InvalidInputError(f"bundle is truncated: entry {name!r} is missing")
    got, _, got_size = entry
    if got != name:
        raise InvalidInputError(f"bundle entry {got[:80]!r} found where {name[:80]!r} belongs")
    if got_size > size or (name != MANIFEST and got_size != size):
        raise InvalidInputError(f"bundle entry {name!r} is {got_size} bytes; the manifest allows {size}")
    return fh.read(got_size)

"""Checks of a bundle's manifest and blobs: untrusted input, every field typed, every hash recomputed.

Used by :mod:`registry.exchange.bundle_format` before anything is written: the manifest's
canonical form and types, each blob's stored hash, capped decoding, payload
hash and tensors, each layer against its blob, the vector hash from the layers,
the family id from its key and every probe set's hash.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .._version import __version__
from ..audit.chain import canonical_json
from ..catalog.queries import check_name
from ..checkpoints.family import FamilyKey, layer_of
from ..checkpoints.reader import check_tensor_name
from ..errors import IntegrityCheckError, InvalidCheckpointError, InvalidInputError
from ..evaluation.probes import KINDS, Probe, probes_hash
from ..method.extract import ENCODINGS, EXTRA_LABEL, SCOPES, decode_slice, vector_hash
from ..store import codec as _codec
from ..store.blobs import sha256_hex

VERSION = 1
FORMAT = "safegene-bundle"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
Slice = tuple[dict[str, list[int]], float]  # a verified blob: tensor shapes, L2 norm
_KEY_TYPES = {"model_type": str, "architecture": str, "num_layers": int, "hidden": int, "vocab": int,
              "intermediate": (int, type(None)), "heads": (int, type(None)), "kv_heads": (int, type(None)),
              "head_dim": (int, type(None)), "tied_embeddings": bool}  # fmt: skip


def _no_nan(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def parse_manifest(body: bytes) -> dict[str, Any]:
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


def check_blob_list(man: dict[str, Any], max_bytes: int) -> None:
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


_ESIZE = {"fp32": 4, "bf16": 2}
_HEADER_SLACK = 1024  # a slice payload's safetensors header: a few hundred bytes per tensor, at most


def check_declared_sizes(man: dict[str, Any]) -> None:
    """Each blob's raw size must be what the vector's declared shapes and encoding make it.

    Checked before any blob is read or decoded, so a bundle cannot make the
    importer allocate more than its tensors could ever hold (a manifest that
    merely claims a large ``raw_size`` is refused here).

    Raises:
        InvalidInputError: undeclared shapes, or a blob whose size its tensors do not explain.
    """
    vec = man["vector"]
    _need(vec, {"encoding": str, "meta": dict}, "vector")
    shapes, esize = vec["meta"].get("shapes"), _ESIZE.get(vec["encoding"])
    if not isinstance(shapes, dict) or esize is None:
        raise InvalidInputError("bundle vector: tensor shapes or encoding missing or unknown")
    sizes = {b["sha256"]: b["raw_size"] for b in man["blobs"]}
    for pos, lay in enumerate(man["layers"]):
        _need(lay, {"tensor_names": list, "blob": str}, "layer")
        data = 0
        for name in lay["tensor_names"]:
            shape = shapes.get(name) if isinstance(name, str) else None
            if not isinstance(shape, list) or len(shape) > 8 or not all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape):  # fmt: skip
                raise InvalidInputError(f"bundle layer {pos}: a tensor has no declared shape (or a malformed one)")
            data += math.prod(shape) * esize
        raw = sizes.get(lay["blob"])
        if raw is None or not data <= raw <= data + _HEADER_SLACK * (1 + len(lay["tensor_names"])):
            raise InvalidInputError(
                f"bundle layer {pos}: its blob claims {raw} bytes, but its declared tensors hold {data}; "
                "the manifest lies about a size"
            )


def check_blob(blob: dict[str, Any], stored: bytes) -> Slice:
    sha = blob["sha256"]
    if sha256_hex(stored) != blob["stored_sha256"]:
        raise IntegrityCheckError(f"bundle blob {sha[:12]}: stored bytes do not match the manifest (altered)")
    try:
        payload = _codec.decode(stored, max_size=blob["raw_size"])  # caps decompression: no zstd bombs
    except IntegrityCheckError as exc:
        raise IntegrityCheckError(f"bundle blob {sha[:12]}: {exc}") from None
    if len(payload) != blob["raw_size"] or sha256_hex(payload) != sha or _codec.codec_name(stored) != blob["codec"]:
        raise IntegrityCheckError(f"bundle blob {sha[:12]}: decoded content does not match its name or size")
    try:
        tensors = decode_slice(payload)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own untyped errors
        raise InvalidInputError(f"bundle blob {sha[:12]} is not a safetensors slice ({exc})") from None
    import torch  # decode_slice has imported it: a catalog that only lists never does

    for name, t in tensors.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise InvalidInputError(f"bundle blob {sha[:12]}: {name[:80]} is not finite floating point")
    norm = math.sqrt(sum(float((t.float() ** 2).sum()) for t in tensors.values()))
    return {n: list(t.shape) for n, t in tensors.items()}, norm


def check_layers(man: dict[str, Any], tensors: dict[str, Slice]) -> None:
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


def _check_layer(lay: Any, pos: int, tensors: dict[str, Slice], probe_sets: set[str]) -> None:
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

"""Vector bundles: round trips between registries, and every way a bundle can lie."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from cli.main import cli
from registry.api import Registry
from registry.catalog import models as m
from registry.errors import (
    AlreadyExistsError,
    IntegrityCheckError,
    InvalidInputError,
    RegistryError,
)
from registry.evaluation.probes import by_kind, load_probes
from registry.exchange.bundle_format import MAGIC, verify_bundle
from registry.toy.build import ToyWorld

TABLES = (m.Family, m.Checkpoint, m.Blob, m.Vector, m.VectorLayer, m.ProbeSet, m.AuditEvent)


def _keys(root: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    priv, pub = root / f"{name}.pem", root / f"{name}.pub"
    priv.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory, quick_world: ToyWorld) -> Iterator[Registry]:
    """A SQLite registry holding the quick world's vector with measured layer scores."""
    reg = Registry.open(tmp_path_factory.mktemp("bundle-src"))
    reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    probes = load_probes(quick_world.shots["all"])
    reg.score_vector("safety", by_kind(probes, "harmful")[:4] + by_kind(probes, "task")[:4])
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def bundles(src: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    priv, pub = _keys(root, "alice")
    other_priv, other_pub = _keys(root, "mallory")
    src.export_bundle("safety", root / "plain.sgb")
    src.export_bundle("safety", root / "signed.sgb", sign_key=priv)
    src.export_bundle("safety", root / "other.sgb", sign_key=other_priv)
    return {"plain": root / "plain.sgb", "signed": root / "signed.sgb", "other": root / "other.sgb",
            "pub": pub, "other_pub": other_pub}  # fmt: skip


def _counts(reg: Registry) -> dict[str, int]:
    return reg.read(lambda s: {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0 for t in TABLES})


def _assert_empty(reg: Registry) -> None:
    assert set(_counts(reg).values()) == {0}
    assert not list(reg.store.iter_shas())
    assert not reg.store.tmp_dir.is_dir() or not list(reg.store.tmp_dir.iterdir())


def _entries(data: bytes) -> list[tuple[str, bytes, int]]:
    """(name, data, offset of the entry header) of each entry, per the documented layout."""
    out, pos = [], 12
    while pos < len(data):
        (n,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + n].decode()
        (size,) = struct.unpack_from("<Q", data, pos + 2 + n)
        start = pos + 2 + n + 8
        out.append((name, data[start : start + size], pos))
        pos = start + size
    return out


def _pack(entries: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(struct.pack("<H", len(n.encode())) + n.encode() + struct.pack("<Q", len(d)) + d
                    for n, d in entries)  # fmt: skip
    return MAGIC + struct.pack("<I", 1) + body


def _rehash(entries: list[tuple[str, bytes]], manifest: dict[str, object]) -> list[tuple[str, bytes]]:
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    rest = [(n, d) for n, d in entries if n not in ("manifest.json", "manifest.sha256")]
    return [("manifest.json", body), ("manifest.sha256", hashlib.sha256(body).hexdigest().encode()), *rest]


def test_format_is_pinned(bundles: dict[str, Path], src: Registry) -> None:
    data = bundles["signed"].read_bytes()
    assert data[:12] == b"SGBUNDLE\x01\x00\x00\x00"
    names = [n for n, _, _ in _entries(data)]
    vec = src.get_vector("safety")
    assert names == ["manifest.json", "manifest.sha256", *[f"blobs/{lay.blob}" for lay in vec.layers],
                     "signature.ed25519"]  # fmt: skip
    man = json.loads(_entries(data)[0][1])
    assert man["vector"]["hash"] == vec.hash and man["family"]["id"] == vec.family
    assert man["provenance"] == {"aligned": vec.aligned, "degraded": vec.degraded}
    assert src.store.path_for(vec.layers[0].blob).read_bytes() == _entries(data)[2][1]  # blobs as stored
    info = verify_bundle(bundles["signed"], verify_key=bundles["pub"])
    assert info.signer == man["signer"] and info.hash == vec.hash


def _round_trip(src: Registry, bundle: Path, dst: Registry, pub: Path) -> None:
    rec = dst.import_bundle(bundle, verify_key=pub)
    ref = src.get_vector("safety")
    assert rec.hash == ref.hash and rec.family == ref.family and rec.meta["source"] == "bundle"
    for a, b in zip(rec.layers, ref.layers, strict=True):
        assert (a.blob, a.score, a.safety_gain, a.task_cost, a.selected, a.probe_set, a.norm) == (
            b.blob, b.score, b.safety_gain, b.task_cost, b.selected, b.probe_set, b.norm)
    assert any(lay.score is not None for lay in rec.layers)
    assert dst.load_vector_slices(rec).keys() == src.load_vector_slices(ref).keys()
    assert dst.get_family(rec.family).key == src.get_family(ref.family).key
    event = dst.read(lambda s: s.scalar(select(m.AuditEvent).where(m.AuditEvent.kind == "vector.register")))
    payload = json.loads(event.payload_json)
    assert payload["source"] == "bundle" and payload["state_digest"] and payload["aligned"] == ref.aligned
    assert dst.verify().ok, dst.verify().problems
    before = _counts(dst)
    again = dst.import_bundle(bundle)  # idempotent: nothing new
    assert again.hash == rec.hash and _counts(dst) == before


def test_round_trip_sqlite_to_postgres(src: Registry, bundles: dict[str, Path], tmp_path: Path, pg_url: str) -> None:
    with Registry.open(tmp_path / "pg-home", pg_url) as dst:
        _round_trip(src, bundles["signed"], dst, bundles["pub"])


def test_round_trip_sqlite_to_sqlite(src: Registry, bundles: dict[str, Path], sqlite_reg: Registry,
                                     quick_world: ToyWorld, tmp_path: Path) -> None:  # fmt: skip
    _round_trip(src, bundles["signed"], sqlite_reg, bundles["pub"])
    target = quick_world.task_model(quick_world.tasks[0])
    ours = sqlite_reg.patch(target, "safety", tmp_path / "a", coefficients="uniform:1.0")
    theirs = src.patch(target, "safety", tmp_path / "b", coefficients="uniform:1.0")
    assert ours.hash == theirs.hash  # same vector, same selection: same patched model
    with pytest.raises(AlreadyExistsError, match="already registered as 'safety'"):
        sqlite_reg.import_bundle(bundles["plain"], name="other-name")


@pytest.mark.parametrize("where", ["header", "manifest", "manifest-hash", "blob-header", "blob", "signature", "end"])
def test_any_altered_byte_is_refused(bundles: dict[str, Path], sqlite_reg: Registry, tmp_path: Path,
                                     where: str) -> None:  # fmt: skip
    data = bundles["signed"].read_bytes()
    ents = _entries(data)
    spans = {"header": range(0, 12), "end": range(len(data) - 8, len(data))}
    for name, body, pos in ents:
        start = pos + 2 + len(name.encode()) + 8
        if name == "manifest.json":
            spans["manifest"] = range(pos, start + len(body))
        elif name == "manifest.sha256":
            spans["manifest-hash"] = range(pos, start + len(body))
        elif name.startswith("blobs/") and "blob" not in spans:
            spans["blob-header"] = range(pos, start)
            spans["blob"] = range(start, start + len(body))
        elif name == "signature.ed25519":
            spans["signature"] = range(pos, start + len(body))
    span = spans[where]
    positions = sorted({span[0], span[-1], *span[:: max(1, len(span) // 12)]})
    bad = tmp_path / "bad.sgb"
    for i in positions:
        bad.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
        for key in (None, bundles["pub"]):
            with pytest.raises(RegistryError):
                sqlite_reg.import_bundle(bad, verify_key=key)
        _assert_empty(sqlite_reg)
    bad.write_bytes(data[:-1])  # truncated
    with pytest.raises(InvalidInputError):
        sqlite_reg.import_bundle(bad)
    bad.write_bytes(data + b"\x00")  # trailing garbage
    with pytest.raises(InvalidInputError):
        sqlite_reg.import_bundle(bad)
    _assert_empty(sqlite_reg)


def test_signatures(bundles: dict[str, Path], sqlite_reg: Registry) -> None:
    with pytest.raises(IntegrityCheckError, match="not by the --verify-key"):
        sqlite_reg.import_bundle(bundles["other"], verify_key=bundles["pub"])
    with pytest.raises(IntegrityCheckError, match="not signed"):
        sqlite_reg.import_bundle(bundles["plain"], verify_key=bundles["pub"])
    _assert_empty(sqlite_reg)
    # alice's manifest with mallory's signature: the manifest names alice, so it cannot verify
    alice, mallory = _entries(bundles["signed"].read_bytes()), _entries(bundles["other"].read_bytes())
    swapped = [(n, d) for n, d, _ in alice[:-1]] + [(mallory[-1][0], mallory[-1][1])]
    (sqlite_reg.home / "swap.sgb").write_bytes(_pack(swapped))
    with pytest.raises(IntegrityCheckError, match="signature does not verify"):
        sqlite_reg.import_bundle(sqlite_reg.home / "swap.sgb")
    # dropping the signature of a signed bundle is caught too (the manifest names its signer)
    (sqlite_reg.home / "drop.sgb").write_bytes(_pack([(n, d) for n, d, _ in alice[:-1]]))
    with pytest.raises(InvalidInputError, match="signature.ed25519"):
        sqlite_reg.import_bundle(sqlite_reg.home / "drop.sgb")
    _assert_empty(sqlite_reg)
    assert sqlite_reg.import_bundle(bundles["other"], verify_key=bundles["other_pub"]).meta["bundle"]["signer"]


def test_path_traversal_and_lying_sizes(bundles: dict[str, Path], sqlite_reg: Registry) -> None:
    plain = [(n, d) for n, d, _ in _entries(bundles["plain"].read_bytes())]
    home = sqlite_reg.home
    cases: dict[str, tuple[bytes, type[Exception], str]] = {}
    traversal = [(n.replace("blobs/", "blobs/../../") if n.startswith("blobs/") else n, d) for n, d in plain]
    cases["traversal"] = (_pack(traversal), InvalidInputError, "unsafe name")
    cases["absolute"] = (_pack([*plain, ("/etc/passwd", b"x")]), InvalidInputError, "unsafe name")
    cases["dotdot"] = (_pack([*plain, ("../evil", b"x")]), InvalidInputError, "unsafe name")
    raw = bytearray(_pack(plain))
    _, _, blob_pos = _entries(bytes(raw))[2]
    size_at = blob_pos + 2 + len(plain[2][0])
    struct.pack_into("<Q", raw, size_at, 1 << 40)
    cases["entry-size"] = (bytes(raw), InvalidInputError, "claims")
    man = json.loads(plain[0][1])
    man["blobs"][0]["raw_size"] = 64  # a lying decoded size: refused from the declared shapes, before decoding
    cases["raw-size"] = (_pack(_rehash(plain, man)), InvalidInputError, "claims 64 bytes")
    man = json.loads(plain[0][1])
    man["blobs"][0]["raw_size"] = 1 << 34  # a small bundle claiming a huge (16 GiB) slice: nothing is allocated
    cases["huge-slice"] = (_pack(_rehash(plain, man)), InvalidInputError, "declared tensors hold")
    man = json.loads(plain[0][1])  # huge declared shapes with a matching size: the default cap refuses them
    first = man["layers"][0]
    for n in first["tensor_names"]:
        man["vector"]["meta"]["shapes"][n] = [1 << 20, 1 << 15]
    blob = next(b for b in man["blobs"] if b["sha256"] == first["blob"])
    blob["raw_size"] = 4 * len(first["tensor_names"]) * (1 << 35) + 512
    cases["huge-shapes"] = (_pack(_rehash(plain, man)), InvalidInputError, "more than the")
    man = json.loads(plain[0][1])
    man["vector"]["hash"] = "0" * 64
    cases["vector-hash"] = (_pack(_rehash(plain, man)), IntegrityCheckError, "vector hash")
    man = json.loads(plain[0][1])
    man["vector"]["meta"]["shapes"] = {k: [1] for k in man["vector"]["meta"]["shapes"]}
    cases["shapes"] = (_pack(_rehash(plain, man)), InvalidInputError, "declared tensors hold")
    man = json.loads(plain[0][1])
    man["blobs"][0]["codec"] = "zstd-from-a-newer-release"
    cases["codec"] = (_pack(_rehash(plain, man)), InvalidInputError, "cannot read; upgrade safegene")
    man = json.loads(plain[0][1])
    man["family"]["key"]["num_layers"] = 99
    cases["family"] = (_pack(_rehash(plain, man)), IntegrityCheckError, "family id")
    for label, (data, exc, match) in cases.items():
        (home / f"{label}.sgb").write_bytes(data)
        with pytest.raises(exc, match=match):
            sqlite_reg.import_bundle(home / f"{label}.sgb")
    with pytest.raises(InvalidInputError, match="more than the 1000 allowed"):
        sqlite_reg.import_bundle(bundles["plain"], max_bytes=1000)
    _assert_empty(sqlite_reg)


def test_cli_export_import(src: Registry, bundles: dict[str, Path], tmp_path: Path) -> None:
    run = CliRunner()
    out = tmp_path / "v.sgb"
    priv = bundles["pub"].with_suffix(".pem")
    res = run.invoke(cli, ["--home", str(src.home), "--json", "vector", "export", "safety", str(out),
                           "--sign-key", str(priv)], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["format"] == "bundle" and doc["hash"] == src.get_vector("safety").hash and doc["signer"]
    home = tmp_path / "home2"
    res = run.invoke(cli, ["--home", str(home), "--json", "vector", "import", str(out), "--name", "copy",
                           "--verify-key", str(bundles["pub"])], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == "copy"
    res = run.invoke(cli, ["--home", str(home), "vector", "import", str(bundles["other"]), "--name", "x",
                           "--verify-key", str(bundles["pub"])])  # fmt: skip
    assert res.exit_code == 7 and "verify-key" in res.output  # IntegrityCheckError → 7


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_bundle_reader(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                            data: st.DataObject) -> None:
    """Random flips, truncations, insertions and length rewrites: a RegistryError with nothing
    written, or (when the mutation changed nothing) the same vector. Nothing else."""
    original = bundles["plain"].read_bytes()
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        if not blob:
            break
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "u64"]))
        pos = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            blob[pos:pos + 8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    path = tmp_path_factory.mktemp("fuzz") / "b.sgb"
    path.write_bytes(bytes(blob))
    dst = Registry.open(path.parent / "home")
    try:
        rec = dst.import_bundle(path)
        assert rec.hash == verify_bundle(bundles["plain"]).hash
    except RegistryError:
        assert dst.count_vectors() == 0 and not list(dst.store.iter_shas())
    finally:
        dst.close()

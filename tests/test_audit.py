"""Tamper evidence, verify/gc, and concurrent appends — on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import select, text, update

from cli.main import cli
from registry.api import Registry
from registry.catalog import models as m
from registry.errors import IntegrityCheckError

AUDIT_FIELDS = ["kind", "actor", "tool_version", "created_at", "vector_hash", "target_hash", "output_hash",
                "payload_json", "prev_hash", "entry_hash", "uid", "signer", "signature", "hash_version"]


@pytest.fixture
def chain_reg(reg: Registry, tiny_models: dict[str, Path], tmp_path: Path) -> Registry:
    """A registry with a vector and three patch events (uniform coefficients, no model load)."""
    reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="v")
    for i in range(3):
        reg.patch(tiny_models["llama_b"], "v", tmp_path / f"out{i}", coefficients=f"uniform:{0.5 + i}", layers="all")
    return reg


def _verify_problems(reg: Registry) -> list[str]:
    return reg.verify().problems


def _edit(reg: Registry, seq: int, **values: object) -> None:
    reg.transaction(lambda s: s.execute(update(m.AuditEvent).where(m.AuditEvent.seq == seq).values(**values)))


def test_clean_chain_verifies(chain_reg: Registry) -> None:
    rep = chain_reg.verify()
    assert rep.ok, rep.problems
    assert rep.events_checked == 4  # register + 3 patches


@pytest.mark.parametrize("field", AUDIT_FIELDS)
def test_editing_any_field_is_detected(chain_reg: Registry, field: str) -> None:
    original = chain_reg.read(lambda s: getattr(s.scalar(select(m.AuditEvent).where(m.AuditEvent.seq == 2)), field))
    tampered = (original[:-1] + ("0" if original[-1] != "0" else "1")) if isinstance(original, str) else original
    if field == "payload_json":
        tampered = original.replace("0.5", "0.9")
    if original is None:
        tampered = "f" * 64
    if field == "hash_version":  # pretend an event predates the signer's coverage
        tampered = 1
    _edit(chain_reg, 2, **{field: tampered})
    problems = chain_reg.audit_verify().problems
    assert problems and "seq 2" in problems[0], (field, problems)


def test_deleting_a_row_is_detected(chain_reg: Registry) -> None:
    chain_reg.transaction(lambda s: s.execute(m.AuditEvent.__table__.delete().where(m.AuditEvent.seq == 3)))
    rep = chain_reg.audit_verify()
    assert not rep.ok and rep.first_bad_seq == 4


def test_deleting_the_last_row_needs_the_head(chain_reg: Registry) -> None:
    """Without an external anchor, truncating the tail is undetectable; the head export catches it."""
    head = chain_reg.audit_head()
    chain_reg.transaction(lambda s: s.execute(m.AuditEvent.__table__.delete().where(m.AuditEvent.seq == 4)))
    assert chain_reg.audit_verify().ok
    assert chain_reg.audit_head()["head"] != head["head"]


def test_reordering_rows_is_detected(chain_reg: Registry) -> None:
    def swap(s):  # type: ignore[no-untyped-def]
        s.execute(update(m.AuditEvent).where(m.AuditEvent.seq == 2).values(seq=-2))
        s.execute(update(m.AuditEvent).where(m.AuditEvent.seq == 3).values(seq=2))
        s.execute(update(m.AuditEvent).where(m.AuditEvent.seq == -2).values(seq=3))

    chain_reg.transaction(swap)
    rep = chain_reg.audit_verify()
    assert not rep.ok and rep.first_bad_seq == 2


def test_editing_layer_scores_is_detected(chain_reg: Registry) -> None:
    chain_reg.transaction(lambda s: s.execute(update(m.VectorLayer).where(m.VectorLayer.position == 0)
                                              .values(score=9.0, selected=False)))
    problems = _verify_problems(chain_reg)
    assert any("vector v" in p and "edited" in p for p in problems), problems


def test_verify_finds_missing_and_corrupt_blobs_and_gc_clears_orphans(chain_reg: Registry) -> None:
    vec = chain_reg.get_vector("v")
    store = chain_reg.store
    store.path_for(vec.layers[0].blob).unlink()
    p = store.path_for(vec.layers[1].blob)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))
    orphan = store.put(b"orphan bytes").sha256
    (store.tmp_dir / "dead.99999999.abcd.tmp").write_bytes(b"x")
    res = CliRunner().invoke(cli, ["--home", str(chain_reg.home), "--db", chain_reg.db_url, "--json", "verify"])
    assert res.exit_code == 1
    import json

    doc = json.loads(res.stdout)
    assert not doc["ok"]
    assert any("missing from the store" in x for x in doc["problems"])
    assert any("corrupt" in x for x in doc["problems"])
    assert any(orphan[:12] in x for x in doc["removable"])
    rep = chain_reg.gc(temp_age_s=0)
    assert orphan in rep.removed_blobs and "dead.99999999.abcd.tmp" in rep.removed_temp_files
    assert not store.exists(orphan)
    assert store.exists(vec.layers[1].blob)  # referenced blobs are never collected


def _file_sha256(store, sha: str) -> str:  # type: ignore[no-untyped-def]
    """sha256 of a blob's stored file itself (what ``blobs.stored_sha256`` records)."""
    import hashlib

    return hashlib.sha256(store.path_for(sha).read_bytes()).hexdigest()


def test_blob_files_are_trusted_once_verified_and_checked_in_full_when_changed(chain_reg: Registry) -> None:
    from registry.method.extract import decode_slice
    from registry.store import codec

    vec = chain_reg.get_vector("v")
    store = chain_reg.store
    shas = [lay.blob for lay in vec.layers]
    # each file's sha256 was recorded as the store wrote it
    rows = chain_reg.blob_rows(shas)
    assert all(rows[sha].stored_sha256 == _file_sha256(store, sha) for sha in shas)
    lay = vec.layers[0]
    before = chain_reg.load_vector_slices(vec, positions=[lay.position])[lay.position]
    # Rewrite one blob with another valid encoding of the same payload: the file no longer
    # matches its record, so it is checked in full, loads, and the new file is recorded.
    payload = bytes(store.get(lay.blob))
    skip = 8 + int.from_bytes(payload[:8], "little")
    store.path_for(lay.blob).write_bytes(codec.encode(payload, skip=skip, width=4, codec="zstd-bytegroup")[1])
    assert _file_sha256(store, lay.blob) != rows[lay.blob].stored_sha256
    after = chain_reg.load_vector_slices(vec, positions=[lay.position])[lay.position]
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert chain_reg.blob_rows([lay.blob])[lay.blob].stored_sha256 == _file_sha256(store, lay.blob)
    assert chain_reg.verify().ok
    # A file that matches its record is trusted as it is: here one whose header digest is
    # wrong loads when its record says so, and is refused by the full check otherwise.
    bad = bytearray(store.path_for(lay.blob).read_bytes())
    bad[24] ^= 0xFF  # a byte of the body digest in the header
    store.path_for(lay.blob).write_bytes(bytes(bad))
    with pytest.raises(IntegrityCheckError, match="digest"):
        chain_reg.load_vector_slices(vec, positions=[lay.position])
    vouched = store.get(lay.blob, stored_sha256=_file_sha256(store, lay.blob))
    assert sorted(decode_slice(vouched)) == sorted(before)


def test_cli_audit_commands(chain_reg: Registry, tmp_path: Path) -> None:
    base = ["--home", str(chain_reg.home), "--db", chain_reg.db_url, "--json"]
    import json

    log = json.loads(CliRunner().invoke(cli, [*base, "audit", "log", "--kind", "patch"]).stdout)
    assert [e["seq"] for e in log["events"]] == [2, 3, 4]
    fam = json.loads(CliRunner().invoke(cli, [*base, "audit", "log", "--family", "llama"]).stdout)
    assert [e["seq"] for e in fam["events"]] == [1, 2, 3, 4]
    none = CliRunner().invoke(cli, [*base, "audit", "log", "--family", "qwen2"])
    assert none.exit_code == 3  # no such family in this catalog
    ident = json.loads(CliRunner().invoke(cli, [*base, "audit", "identify", str(tmp_path / "out1")]).stdout)
    assert ident["event"] == log["events"][1]["uid"] and ident["output"] and ident["vector"] and ident["target"]
    show = json.loads(CliRunner().invoke(cli, [*base, "audit", "show", "3"]).stdout)
    assert show["uid"] == ident["event"]
    ok = CliRunner().invoke(cli, [*base, "audit", "verify"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True
    _edit(chain_reg, 3, actor="mallory")
    bad = CliRunner().invoke(cli, [*base, "audit", "verify"])
    assert bad.exit_code == 1 and "seq 3" in json.loads(bad.stdout)["problems"][0]


WORKER = textwrap.dedent("""
    import sys
    from registry import Registry
    home, url, target, out, n = sys.argv[1:6]
    reg = Registry.open(home, url)
    for i in range(int(n)):
        reg.patch(target, "v", f"{out}-{i}", coefficients=f"uniform:{0.1 * (i + 1)}", layers="all")
""")


def test_concurrent_patches_keep_one_linear_chain(reg: Registry, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="v")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(reg.home), reg.db_url, str(tiny_models["llama_b"]),
                               str(tmp_path / f"w{k}"), "10"], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "SAFEGENE_ACTOR": f"worker{k}"})
             for k in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    patches = reg.audit_log(kind="patch")
    assert len(patches) == 40
    assert {e.actor for e in patches} == {f"worker{k}" for k in range(4)}
    rep = reg.verify()
    assert rep.ok, rep.problems
    assert reg.read(lambda s: s.execute(text("SELECT COUNT(DISTINCT seq) FROM audit_events")).scalar()) == 41


def _keypair(root: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    priv, pub = root / f"{name}.pem", root / f"{name}.pub"
    priv.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_signed_events(tmp_path: Path, db_url: str, tiny_models: dict[str, Path]) -> None:
    priv, pub = _keypair(tmp_path, "ops")
    _, other_pub = _keypair(tmp_path, "mallory")
    home = tmp_path / "signed-home"
    base = ["--home", str(home), "--db", db_url]
    runner = CliRunner()
    res = runner.invoke(cli, [*base, "--sign-key", str(priv), "vector", "extract", "--aligned",
                              str(tiny_models["llama"]), "--degraded", str(tiny_models["llama_b"]), "--name", "v"])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(cli, [*base, "--sign-key", str(priv), "patch", str(tiny_models["llama_b"]), "--vector", "v",
                              "--out", str(tmp_path / "o"), "--coefficients", "uniform", "--layers", "all"])
    assert res.exit_code == 0, res.stderr
    assert runner.invoke(cli, [*base, "audit", "verify", "--verify-key", str(pub)]).exit_code == 0
    bad = runner.invoke(cli, [*base, "--json", "audit", "verify", "--verify-key", str(other_pub)])
    assert bad.exit_code == 1 and "not signed by the given key" in bad.stdout
    # an unsigned event appended later fails the key check, but not the plain chain check
    res = runner.invoke(cli, [*base, "patch", str(tiny_models["llama_b"]), "--vector", "v", "--out",
                              str(tmp_path / "o2"), "--coefficients", "uniform:0.3", "--layers", "all"])
    assert res.exit_code == 0
    assert runner.invoke(cli, [*base, "audit", "verify"]).exit_code == 0
    unsigned = runner.invoke(cli, [*base, "--json", "verify", "--verify-key", str(pub)])
    assert unsigned.exit_code == 1 and "seq 3" in unsigned.stdout
    # forging: a signature that does not match its entry is caught even without a key
    reg = Registry.open(home, db_url)
    sig = reg.read(lambda s: s.scalar(select(m.AuditEvent.signature).where(m.AuditEvent.seq == 1)))
    _edit(reg, 1, signature=sig[:-2] + ("00" if sig[-2:] != "00" else "11"))
    rep = reg.audit_verify()
    assert not rep.ok and "signature does not verify" in rep.problems[0]
    _edit(reg, 1, signature=sig)
    assert reg.audit_verify().ok
    # stripping: the signer is covered by the entry hash, so removing the signature shows without any key
    signer = reg.read(lambda s: s.scalar(select(m.AuditEvent.signer).where(m.AuditEvent.seq == 2)))
    _edit(reg, 2, signer=None, signature=None)
    rep = reg.audit_verify()
    assert not rep.ok and "seq 2" in rep.problems[0] and "entry_hash" in rep.problems[0], rep.problems
    # ... and so does swapping in another signer (with that key's valid signature, it would still break the hash)
    _edit(reg, 2, signer="ab" * 32, signature=None)
    assert not reg.audit_verify().ok
    _edit(reg, 2, signer=signer)
    reg.close()

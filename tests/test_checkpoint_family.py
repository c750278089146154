"""Checkpoint identity, family fingerprints and hostile checkpoint folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import cli
from registry.api import Registry
from registry.catalog import models as m
from registry.checkpoints.family import compatibility_reasons, family_key, layer_of
from registry.checkpoints.reader import Checkpoint, read_header
from registry.errors import InvalidCheckpointError


def _fam(path: Path) -> str:
    ck = Checkpoint(path)
    return family_key(ck.config, ck.names()).id


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_dtype_changes_hash_not_family(tiny_models: dict[str, Path], arch: str) -> None:
    a, b = Checkpoint(tiny_models[arch]), Checkpoint(tiny_models[f"{arch}_bf16"])
    assert a.content_hash() != b.content_hash()
    assert _fam(tiny_models[arch]) == _fam(tiny_models[f"{arch}_bf16"])


def test_resharding_keeps_hash(tiny_models: dict[str, Path]) -> None:
    sharded = Checkpoint(tiny_models["llama_sharded"])
    assert len(sharded.files) >= 2
    assert sharded.content_hash() == Checkpoint(tiny_models["llama"]).content_hash()


def test_weights_change_hash_not_family(tiny_models: dict[str, Path]) -> None:
    assert Checkpoint(tiny_models["llama"]).content_hash() != Checkpoint(tiny_models["llama_b"]).content_hash()
    assert _fam(tiny_models["llama"]) == _fam(tiny_models["llama_b"])


def test_architecture_and_size_change_family(tiny_models: dict[str, Path]) -> None:
    fams = {_fam(tiny_models[k]) for k in ("llama", "llama_wide", "qwen2", "gpt2")}
    assert len(fams) == 4


def test_gpt2_is_tied(tiny_models: dict[str, Path]) -> None:
    ck = Checkpoint(tiny_models["gpt2"])
    key = family_key(ck.config, ck.names())
    assert key.tied_embeddings and key.num_layers == 2 and key.hidden == 32


def test_layer_of() -> None:
    assert layer_of("model.layers.3.mlp.up_proj.weight") == (3, "model.layers.{i}.mlp.up_proj.weight")
    assert layer_of("transformer.h.11.attn.c_attn.weight") == (11, "transformer.h.{i}.attn.c_attn.weight")
    assert layer_of("model.embed_tokens.weight") is None


def test_compatibility_reasons(tiny_models: dict[str, Path]) -> None:
    llama = Checkpoint(tiny_models["llama"]).manifest()
    wide = Checkpoint(tiny_models["llama_wide"]).manifest()
    assert compatibility_reasons(llama, llama) == []
    reasons = compatibility_reasons(llama, wide)
    assert reasons and any("shape" in r for r in reasons)
    resized = dict(llama)
    resized["model.embed_tokens.weight"] = (80, 32)
    assert any("vocabulary resized" in r for r in compatibility_reasons(resized, llama))
    with_head = {"lm_head.weight": (64, 32)}
    gpt2 = Checkpoint(tiny_models["gpt2"]).manifest()
    assert "ties lm_head" in compatibility_reasons(with_head, gpt2, target_tied=True)[0]


def test_model_add_registers_family(sqlite_reg: Registry, tiny_models: dict[str, Path]) -> None:
    a = sqlite_reg.add_model(tiny_models["llama"], role="aligned")
    b = sqlite_reg.add_model(tiny_models["llama_bf16"], role="task", parent=a.name)
    assert a.family == b.family and a.hash != b.hash and b.parent == a.hash
    assert sqlite_reg.add_model(tiny_models["llama_sharded"]).hash == a.hash  # same tensors
    fams = sqlite_reg.list_families()
    assert len(fams) == 1 and fams[0].num_checkpoints == 2
    assert sqlite_reg.get_model(a.hash[:10]).name == a.name


# --- hostile and broken folders -----------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _offsets_past_end(d: Path) -> None:
    f = d / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + 10**9, end + 10**9]
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    f.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])


def _header_too_long(d: Path) -> None:
    f = d / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes((len(raw) * 10).to_bytes(8, "little") + raw[8:])


def _no_config(d: Path) -> None:
    (d / "config.json").unlink()


def _config_not_json(d: Path) -> None:
    (d / "config.json").write_text("{not json")


def _pickle_only(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")


BREAKERS = {
    "truncated": (_truncate, "past the end|truncated|match"),
    "offsets_past_end": (_offsets_past_end, "past the end"),
    "header_too_long": (_header_too_long, "header length"),
    "no_config": (_no_config, "config.json"),
    "config_not_json": (_config_not_json, "not valid JSON"),
    "pickle_only": (_pickle_only, "never unpickles"),
}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_bad_checkpoint_writes_nothing(tmp_path: Path, tiny_models: dict[str, Path], case: str) -> None:
    breaker, pattern = BREAKERS[case]
    bad = _copy(tiny_models["llama"], tmp_path / "bad")
    breaker(bad)
    home = tmp_path / "home"
    res = CliRunner().invoke(cli, ["--home", str(home), "model", "add", str(bad)], catch_exceptions=False)
    assert res.exit_code == 5, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(pattern, lines[0]), lines[0]
    reg = Registry.open(home)
    counts = reg.read(lambda s: (s.scalar(select(func.count()).select_from(m.Checkpoint)),
                                 s.scalar(select(func.count()).select_from(m.Family))))
    assert counts == (0, 0)
    assert not list(reg.store.iter_shas())
    reg.close()


def test_missing_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "model", "add", str(tmp_path / "nope")])
    assert res.exit_code == 5 and "no such checkpoint folder" in res.stderr


def test_header_names_are_validated(tmp_path: Path) -> None:
    bad = {"../../etc/passwd": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(bad).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    with pytest.raises(InvalidCheckpointError, match="plain dotted name"):
        read_header(f)


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    hdr = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    raw = json.dumps(hdr).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 12)
    with pytest.raises(InvalidCheckpointError, match="overlap"):
        read_header(f)

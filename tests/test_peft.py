"""PEFT LoRA adapters both ways, checked against the real `peft` package."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli.main import cli
from registry.api import Registry
from registry.checkpoints.reader import Checkpoint
from registry.errors import IncompatibleError, InvalidInputError
from registry.evaluation.probes import by_kind, load_probes
from registry.method.recalibrate import FitSettings
from registry.toy.build import ToyWorld

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, quick_world: ToyWorld) -> Iterator[tuple[Registry, ToyWorld]]:
    """A registry with the quick world's vector and one cached recalibration on task model 0."""
    reg = Registry.open(tmp_path_factory.mktemp("peft-home"))
    reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    task = quick_world.tasks[0]
    shots = load_probes(quick_world.shots[task])
    few = by_kind(shots, "harmful")[:4] + by_kind(shots, "task")[:4]
    reg.recalibrate(quick_world.task_model(task), "safety", few, layers="all", settings=FitSettings(steps=3))
    yield reg, quick_world
    reg.close()


def _merged(base_dir: Path, adapter: Path) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def _patched(reg: Registry, target: Path, out: Path, coefficients: str, layers: str = "auto") -> Checkpoint:
    reg.patch(target, "safety", out, coefficients=coefficients, layers=layers)
    return Checkpoint(out)


def test_full_energy_export_merges_to_our_patch(world: tuple[Registry, ToyWorld], tmp_path: Path) -> None:
    reg, w = world
    target = w.task_model(w.tasks[1])  # no recalibration for this one: λ = 1 on selected layers
    res = reg.export_peft("safety", tmp_path / "lora", energy=1.0)
    assert res.max_relative_error < 1e-5
    assert all(mod.rank == mod.full_rank and mod.coefficient == 1.0 for mod in res.modules)
    merged = _merged(target, tmp_path / "lora")
    patched = _patched(reg, target, tmp_path / "patched", "uniform:1.0")
    for name in patched.names():
        if name in merged:
            torch.testing.assert_close(merged[name], patched.get_tensor(name), rtol=0, atol=2e-6)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == res.r and cfg["lora_alpha"] == res.r
    assert sorted(cfg["target_modules"]) == sorted(mod.module for mod in res.modules)
    keys = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert f"base_model.model.{res.modules[0].module}.lora_A.weight" in keys
    assert len(keys) == 2 * len(res.modules)


def test_truncated_export_is_within_recorded_error(world: tuple[Registry, ToyWorld], tmp_path: Path) -> None:
    reg, w = world
    target = w.task_model(w.tasks[0])
    res = reg.export_peft("safety", tmp_path / "lora", target=target, energy=0.9, lossy=True)
    assert res.behaviour["checked"] and res.behaviour["shots"] == 8 and res.behaviour["kl"] > 0
    recal = json.loads((tmp_path / "lora" / "safegene_export.json").read_text())
    assert recal["errors"] == res.errors and recal["safegene"]["target"] == res.target
    assert set(res.coefficients) == {"0", "1"} and res.coefficients != {"0": 1.0, "1": 1.0}
    assert all(mod.rank < mod.full_rank and mod.energy >= 0.9 for mod in res.modules)
    assert 0.0 < res.max_relative_error <= (1 - 0.9) ** 0.5 + 1e-6
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    differing = {mod.module: mod.rank for mod in res.modules if mod.rank != res.r}
    assert cfg["rank_pattern"] == differing and cfg["alpha_pattern"] == differing and differing
    merged = _merged(target, tmp_path / "lora")
    (tmp_path / "coefs.json").write_text(json.dumps(res.coefficients))
    patched = _patched(reg, target, tmp_path / "patched", str(tmp_path / "coefs.json"), layers="all")
    base = Checkpoint(target)
    for mod in res.modules:
        ours = patched.get_tensor(mod.tensor)
        delta = ours - base.get_tensor(mod.tensor)
        measured = float((merged[mod.tensor] - ours).norm() / delta.norm())
        assert measured == pytest.approx(mod.relative_error, rel=1e-3, abs=1e-6), mod.module


def test_default_rank_behaves_like_the_patch_and_a_lossy_one_is_refused(world: tuple[Registry, ToyWorld],
                                                                        tmp_path: Path) -> None:
    """Issue 19.10: the default export is judged by behaviour (KL to the patch on the shots), not matrix error."""
    from registry.exchange.peft_check import KL_TOLERANCE

    reg, w = world
    target = w.task_model(w.tasks[0])
    res = reg.export_peft("safety", tmp_path / "auto", target=target)
    b = res.behaviour
    assert b["checked"] and b["shots"] == 8 and b["within_tolerance"] and b["kl"] <= KL_TOLERANCE
    assert b["energy"] in (0.99, 0.999, 0.9999, 1.0)
    sidecar = json.loads((tmp_path / "auto" / "safegene_export.json").read_text())
    assert sidecar["behaviour"] == b and sidecar["safegene"]["energy"] == b["energy"]
    # a rank far too small for this vector: refused, nothing written
    with pytest.raises(InvalidInputError, match="does not behave like the patch"):
        reg.export_peft("safety", tmp_path / "r1", target=target, rank=1)
    assert not (tmp_path / "r1").exists()
    lossy = reg.export_peft("safety", tmp_path / "r1", target=target, rank=1, lossy=True)
    assert not lossy.behaviour["within_tolerance"] and lossy.behaviour["kl"] > KL_TOLERANCE
    res = CliRunner().invoke(cli, ["--home", str(reg.home), "vector", "export", "safety", str(tmp_path / "cli"),
                                   "--format", "peft", "--target", str(target)])
    assert res.exit_code == 0 and "behaviour: KL to the patch" in res.stdout and "within" in res.stdout, res.output


def test_fixed_rank_and_refusals(world: tuple[Registry, ToyWorld], tmp_path: Path) -> None:
    reg, w = world
    res = reg.export_peft("safety", tmp_path / "r2", rank=2)
    assert {mod.rank for mod in res.modules} == {2} and res.r == 2
    cfg = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {}
    with pytest.raises(InvalidInputError, match="no cached recalibration"):
        reg.export_peft("safety", tmp_path / "x", target=w.task_model(w.tasks[1]))
    with pytest.raises(InvalidInputError, match="energy"):
        reg.export_peft("safety", tmp_path / "x", energy=1.5)
    with pytest.raises(Exception, match="already exists"):
        reg.export_peft("safety", tmp_path / "r2", rank=2)
    assert not (tmp_path / "x").exists()


def _peft_adapter(base_dir: Path, out: Path, **lora_kwargs: object) -> Path:
    """An adapter written by peft itself, with random (nonzero) A and B."""
    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    cfg = peft.LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **lora_kwargs)
    pm = peft.get_peft_model(model, cfg)
    pm.save_pretrained(out)
    return out


@pytest.mark.parametrize("rslora", [False, True])
def test_import_matches_peft_merge(sqlite_reg: Registry, tiny_models: dict[str, Path], tmp_path: Path,
                                   rslora: bool) -> None:  # fmt: skip
    base = tiny_models["llama"]
    patterns = {} if rslora else {"rank_pattern": {"down_proj": 2}, "alpha_pattern": {"down_proj": 3}}
    adapter = _peft_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, use_rslora=rslora,
                            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], **patterns)  # fmt: skip
    rec = sqlite_reg.import_peft(adapter, name="lora-safety", base=base)
    assert rec.aligned is None and rec.degraded is None and rec.meta["source"] == "peft"
    assert [lay.index for lay in rec.layers] == [0, 1] and rec.tensor_scope == "blocks"
    sqlite_reg.patch(base, "lora-safety", tmp_path / "ours", coefficients="uniform:1.0", layers="all")
    ours, merged = Checkpoint(tmp_path / "ours"), _merged(base, adapter)
    changed = 0
    for name in ours.names():
        if name in merged:
            torch.testing.assert_close(ours.get_tensor(name), merged[name], rtol=1e-5, atol=1e-6)
            changed += not torch.equal(merged[name], Checkpoint(base).get_tensor(name))
    assert changed == 8  # 4 modules × 2 blocks
    assert sqlite_reg.verify().ok
    again = sqlite_reg.import_peft(adapter, name="lora-safety", base=base)
    assert again.hash == rec.hash and sqlite_reg.count_vectors() == 1


def test_gpt2_conv1d_round_trip(sqlite_reg: Registry, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Conv1D weights are [in, out]: import transposes B·A, export writes fan_in_fan_out."""
    base = tiny_models["gpt2"]
    adapter = _peft_adapter(base, tmp_path / "adapter", r=4, lora_alpha=4, fan_in_fan_out=True,
                            target_modules=["c_attn", "c_fc"])  # fmt: skip
    sqlite_reg.import_peft(adapter, name="g", base=base)
    sqlite_reg.patch(base, "g", tmp_path / "ours", coefficients="uniform:1.0", layers="all")
    ours, merged = Checkpoint(tmp_path / "ours"), _merged(base, adapter)
    for name in ours.names():
        if name in merged:
            torch.testing.assert_close(ours.get_tensor(name), merged[name], rtol=1e-5, atol=1e-6)
    res = sqlite_reg.export_peft("g", tmp_path / "again", base=base, energy=1.0)
    assert all(mod.fan_in_fan_out for mod in res.modules) and res.r == 4  # the rank PEFT trained
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    remerged = _merged(base, tmp_path / "again")
    for name, t in merged.items():
        torch.testing.assert_close(remerged[name], t, rtol=1e-5, atol=1e-6)


def test_export_refuses_tensors_that_are_not_lora_targets(sqlite_reg: Registry, tiny_models: dict[str, Path],
                                                          tmp_path: Path) -> None:  # fmt: skip
    sqlite_reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="full", scope="all")
    with pytest.raises(IncompatibleError, match="cannot be LoRA targets") as err:
        sqlite_reg.export_peft("full", tmp_path / "x", coefficients={"0": 1.0, "1": 1.0, "extra": 1.0})
    assert any("embed_tokens" in r for r in err.value.reasons)
    res = sqlite_reg.export_peft("full", tmp_path / "x", coefficients={"0": 1.0, "extra": 0.5},
                      skip_unsupported=True, energy=1.0)  # fmt: skip
    assert any(mod.module == "lm_head" for mod in res.modules)
    assert any("embed_tokens" in s for s in res.skipped) and not (tmp_path / "x" / "model.safetensors").exists()


def test_import_validates_untrusted_adapters(sqlite_reg: Registry, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_models["llama"]
    good = _peft_adapter(base, tmp_path / "good", r=2, lora_alpha=2, target_modules=["q_proj"])

    def variant(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    pickled = variant("pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InvalidInputError, match="never unpickles"):
        sqlite_reg.import_peft(pickled, name="x", base=base)
    not_obj = variant("not-obj")
    (not_obj / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="JSON object"):
        sqlite_reg.import_peft(not_obj, name="x", base=base)
    nan = variant("nan")
    tensors = load_file(nan / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key][0, 0] = float("inf")
    save_file(tensors, nan / "adapter_model.safetensors")
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        sqlite_reg.import_peft(nan, name="x", base=base)
    stray = variant("stray")
    tensors = load_file(stray / "adapter_model.safetensors")
    tensors["base_model.model.model.embed_tokens.weight"] = torch.zeros(64, 32)
    save_file(tensors, stray / "adapter_model.safetensors")
    with pytest.raises(InvalidInputError, match="not a LoRA weight"):
        sqlite_reg.import_peft(stray, name="x", base=base)
    with pytest.raises(IncompatibleError, match="do not fit the base weight"):
        sqlite_reg.import_peft(good, name="x", base=tiny_models["llama_wide"])
    dora = variant("dora")
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(InvalidInputError, match="use_dora"):
        sqlite_reg.import_peft(dora, name="x", base=base)
    assert sqlite_reg.count_vectors() == 0 and not list(sqlite_reg.store.iter_shas())


def test_cli_export_and_import(world: tuple[Registry, ToyWorld], tmp_path: Path) -> None:
    reg, w = world
    run = CliRunner()
    res = run.invoke(cli, ["--home", str(reg.home), "--json", "vector", "export", "safety", str(tmp_path / "lora"),
                           "--format", "peft", "--rank", "4"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["format"] == "peft" and doc["hash"] == reg.get_vector("safety").hash
    assert set(doc["errors"]) == {mod["module"] for mod in doc["modules"]}
    home2 = tmp_path / "home2"
    res = run.invoke(cli, ["--home", str(home2), "--json", "vector", "import", str(tmp_path / "lora"),
                           "--name", "back", "--base", str(w.models["aligned"])], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["meta"]["source"] == "peft"
    res = run.invoke(cli, ["--home", str(home2), "vector", "import", str(tmp_path / "lora"), "--name", "b2"])
    assert res.exit_code == 5 and "--base" in res.output  # InvalidInputError → 5

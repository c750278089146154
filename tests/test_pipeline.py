"""Extract → score → recalibrate → resolve → patch on real (toy) transformers checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select, update
from transformers import AutoModelForCausalLM, PreTrainedModel

from cli.main import cli
from registry.api import Registry
from registry.catalog import models as m
from registry.checkpoints.reader import Checkpoint
from registry.errors import IncompatibleError, InvalidInputError
from registry.method.recalibrate import FitSettings, ShotBatches, apply_in_memory
from registry.toy.build import ToyWorld

FAST = FitSettings(steps=8)


@pytest.fixture
def world_reg(tmp_path: Path, quick_world: ToyWorld) -> Registry:
    reg = Registry.open(tmp_path / "home")
    reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    return reg


def test_extract_is_exact_difference(world_reg: Registry, quick_world: ToyWorld) -> None:
    vec = world_reg.get_vector("safety")
    a, d = Checkpoint(quick_world.models["aligned"]), Checkpoint(quick_world.models["degraded"])
    key_layers = [lay for lay in vec.layers if lay.index is not None]
    config = json.loads((quick_world.models["aligned"] / "config.json").read_text())
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    assert [lay.index for lay in key_layers] == list(range(n_layers))
    slices = world_reg.load_vector_slices(vec)
    for lay in vec.layers:
        for name, v in slices[lay.position].items():
            expected = a.get_tensor(name).float() - d.get_tensor(name).float()
            assert torch.equal(v, expected), name
            assert v.dim() == 2  # default scope: block matrices only
    roles = {r.role for r in world_reg.list_models()}
    assert roles == {"aligned", "degraded"}
    assert vec.aligned == a.content_hash() and vec.degraded == d.content_hash()


def test_extract_hashes_sources_once_in_any_slice_order(tmp_path: Path, quick_world: ToyWorld) -> None:
    """Blocks are hashed from the extraction's own reads; ``all`` (names interleave) hashes first: same identities."""
    from registry.checkpoints.reader import ContentHasher
    from registry.method.extract import name_order, plan_slices, scope_names

    a, d = Checkpoint(quick_world.models["aligned"]), Checkpoint(quick_world.models["degraded"])
    assert name_order(plan_slices(scope_names(a, "blocks"), "blocks")) is not None
    assert name_order(plan_slices(scope_names(a, "all"), "all")) is None
    reg = Registry.open(tmp_path / "home")
    vec = reg.extract_vector(a.path, d.path, name="all", scope="all")
    assert (vec.aligned, vec.degraded) == (a.content_hash(), d.content_hash())
    assert [lay.position for lay in vec.layers] == list(range(len(vec.layers)))
    assert vec.layers[-1].label == "extra"
    again = reg.extract_vector("aligned", "degraded", name="blocks")  # catalog refs: nothing re-hashed
    assert (again.aligned, again.degraded) == (vec.aligned, vec.degraded) and len(reg.list_models()) == 2
    h = ContentHasher(a)
    names = a.names()
    h.begin(names[1])
    with pytest.raises(ValueError, match="never hashed"):
        h.begin(names[2])
    h.update(a.get_tensor(names[1]).contiguous().view(torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="name order"):
        h.begin(names[0])
    assert h.hexdigest() == a.content_hash()
    ahead = ContentHasher(a)  # the tensors before a name hashed ahead (extraction: in another thread)
    ahead.hash_before(names[2])
    ahead.begin(names[2])
    ahead.update(a.get_tensor(names[2]).contiguous().view(torch.uint8).numpy().tobytes())
    assert ahead.hexdigest() == a.content_hash()
    behind = ContentHasher(a)
    behind.hash_before(names[2])
    with pytest.raises(ValueError, match="name order"):
        behind.hash_before(names[1])


def test_new_blob_files_are_recorded_as_written(world_reg: Registry) -> None:
    """The store records each file's sha256 as it writes it: the first read already skips the payload hash."""
    from registry.store.blobs import sha256_hex

    vec = world_reg.get_vector("safety")
    store = world_reg.store
    rows = world_reg.blob_rows([lay.blob for lay in vec.layers])
    for lay in vec.layers:
        assert rows[lay.blob].stored_sha256 == sha256_hex(store.path_for(lay.blob).read_bytes())
    learned: dict[str, str] = {}  # filled only by a full check (decode, then hash the payload)
    lay = vec.layers[0]
    fast = world_reg.load_slice(vec, lay, row=rows[lay.blob], verified=learned)
    assert learned == {}
    assert all(torch.equal(fast[n], v) for n, v in world_reg.load_vector_slices(vec)[lay.position].items())


def test_extract_same_vector_twice_is_one_vector(world_reg: Registry, quick_world: ToyWorld) -> None:
    from registry.errors import AlreadyExistsError

    with pytest.raises(AlreadyExistsError):
        world_reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    with pytest.raises(AlreadyExistsError, match="already registered as 'safety'"):
        world_reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="other")
    assert world_reg.count_vectors() == 1


def test_extract_refuses_different_families(sqlite_reg: Registry, tiny_models: dict[str, Path]) -> None:
    with pytest.raises(IncompatibleError, match="different families"):
        sqlite_reg.extract_vector(tiny_models["llama"], tiny_models["qwen2"], name="bad")
    assert sqlite_reg.count_vectors() == 0
    assert not list(sqlite_reg.store.iter_shas())


def test_extract_rejects_nan(sqlite_reg: Registry, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "nan"
    shutil.copytree(tiny_models["llama_b"], bad)
    tensors = load_file(bad / "model.safetensors")
    name = next(n for n in tensors if "layers.1.mlp" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    assert sqlite_reg.count_vectors() == 0 and sqlite_reg.list_models() == []  # catalog connections opened
    open_fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        sqlite_reg.extract_vector(tiny_models["llama"], bad, name="nanvec")
    assert sqlite_reg.count_vectors() == 0
    assert sqlite_reg.list_models() == []  # sources are registered only with their vector
    if open_fds is not None:  # the source files opened for hashing are closed on failure too
        assert len(os.listdir("/proc/self/fd")) == open_fds


def test_score_stores_layer_scores(world_reg: Registry, quick_world: ToyWorld) -> None:
    vec = world_reg.score_vector("safety", quick_world.shots["all"])
    blocks = [lay for lay in vec.layers if lay.index is not None]
    assert all(lay.score is not None and lay.probe_set for lay in blocks)
    assert all(lay.selected == (lay.score > 0 and lay.safety_gain > 0) for lay in blocks)  # type: ignore[operator]
    assert any(lay.safety_gain and lay.safety_gain > 0 for lay in blocks)
    res = CliRunner().invoke(cli, ["--home", str(world_reg.home), "--json", "vector", "show", "safety"])
    doc = json.loads(res.stdout)
    assert {"index", "score", "selected"} <= set(doc["layers"][0])
    assert doc["aligned"] and doc["degraded"] and doc["family"]


def test_recalibrate_bounds_and_cache(world_reg: Registry, quick_world: ToyWorld) -> None:
    target = quick_world.task_model(quick_world.tasks[0])
    shots = quick_world.shots[quick_world.tasks[0]]
    res = world_reg.recalibrate(target, "safety", shots, layers="all", settings=FAST)
    assert not res.cached and len(res.coefficients) >= 2
    assert all(0.0 <= v <= FAST.lambda_max for v in res.coefficients.values())
    assert res.losses[-1] < res.losses[0]
    again = world_reg.recalibrate(target, "safety", shots, layers="all", settings=FAST)
    assert again.cached and again.coefficients == res.coefficients
    n = world_reg.read(lambda s: s.scalar(select(func.count()).select_from(m.Recalibration)))
    assert n == 1


def _task_model_and_shots_with_kl_rows(world: ToyWorld, *, batch_size: int) -> tuple[PreTrainedModel, ShotBatches]:
    """The first task model and its encoded shots, plus each benign prompt again without an answer (KL rows)."""
    from registry.evaluation.probes import Probe, load_probes
    from registry.evaluation.textio import load_model, load_tokenizer
    from registry.method.recalibrate import encode_shots

    target = world.task_model(world.tasks[0])
    model, tok = load_model(target), load_tokenizer(target)
    shots = load_probes(world.shots[world.tasks[0]])
    shots += [Probe(prompt=p.prompt, kind="benign", response=None) for p in shots if p.kind == "benign"]
    return model, encode_shots(tok, shots, batch_size=batch_size)


def test_one_forward_objective_equals_a_forward_per_chunk(world_reg: Registry, quick_world: ToyWorld) -> None:
    """The merged batch (every chunk of every kind in one right-padded forward) gives each chunk's own terms."""
    from torch.func import functional_call

    from registry.method.recalibrate import _Objective

    model, batches = _task_model_and_shots_with_kl_rows(quick_world, batch_size=3)  # several chunks of each kind
    assert len(batches.harmful) > 1 and batches.benign_kl
    assert len({b["input_ids"].shape[1] for b in batches.harmful + batches.benign + batches.benign_kl}) > 1
    vec = world_reg.get_vector("safety")
    slices = world_reg.load_vector_slices(vec)
    rows = sum(b["input_ids"].shape[0] for b in batches.harmful + batches.task + batches.benign + batches.benign_kl)
    one = _Objective(model, slices, batches, FitSettings(batch_size=rows))  # every chunk in one forward
    capped = _Objective(model, slices, batches, FitSettings(batch_size=7))  # forwards of at most 7 rows
    assert len(one.groups) == 1 and len(capped.groups) > 1
    assert all(g.kwargs["input_ids"].shape[0] <= 7 for g in capped.groups)
    lam = torch.linspace(0.2, 1.4, len(one.positions))
    ov = one.overrides(lam)

    def ce(b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = functional_call(model, ov, args=(), kwargs={"input_ids": b["input_ids"],
                                                              "attention_mask": b["attention_mask"]}).logits  # fmt: skip
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 b["labels"][:, 1:].reshape(-1), ignore_index=-100)  # fmt: skip

    def kl(b: dict[str, torch.Tensor]) -> torch.Tensor:
        kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        ref = model(**kw).logits.log_softmax(-1)
        logp = functional_call(model, ov, args=(), kwargs=kw).logits.log_softmax(-1)
        mask = b["attention_mask"].unsqueeze(-1).float()
        return (ref.exp() * (ref - logp) * mask).sum() / mask.sum()

    def mean(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(xs).mean()

    with torch.no_grad():
        got, got_capped = one.terms(lam), capped.terms(lam)
        want = {"harmful": mean([ce(b) for b in batches.harmful]), "task": mean([ce(b) for b in batches.task]),
                "benign": mean([ce(b) for b in batches.benign]) + mean([kl(b) for b in batches.benign_kl])}  # fmt: skip
    for k, v in want.items():
        assert float(v) > 0
        assert abs(float(got[k]) - float(v)) <= 1e-5 * max(1.0, abs(float(v))), k
        assert abs(float(got_capped[k]) - float(v)) <= 1e-5 * max(1.0, abs(float(v))), k


def test_layer_scores_equal_a_fresh_objective_per_slice(world_reg: Registry, quick_world: ToyWorld) -> None:
    """score_layers computes the unpatched terms and KL references once: each slice's score is still what
    its own objective, built from scratch, gives at λ = 0 and λ = 1."""
    from registry.method.recalibrate import _Objective, score_layers

    model, batches = _task_model_and_shots_with_kl_rows(quick_world, batch_size=4)
    assert batches.benign_kl
    slices = world_reg.load_vector_slices(world_reg.get_vector("safety"))
    blocks = {p: s for p, s in slices.items() if p in sorted(slices)[:3]}
    got = score_layers(model, blocks, batches, beta=0.5)
    assert [s.position for s in got] == sorted(blocks)
    settings = FitSettings(beta=0.5, gamma=0.0)
    with torch.no_grad():
        for s in got:
            obj = _Objective(model, {s.position: blocks[s.position]}, batches, settings)
            base, added = obj.terms(torch.zeros(1)), obj.terms(torch.ones(1))
            gain = float(base["harmful"] - added["harmful"])
            cost = float(0.5 * (added["task"] - base["task"]) + (added["benign"] - base["benign"]))
            assert (s.safety_gain, s.task_cost) == pytest.approx((gain, cost), rel=1e-6, abs=1e-7)
    assert len({round(s.score, 6) for s in got}) == len(got)  # the slices were told apart


def test_patch_matches_in_memory_application(world_reg: Registry, quick_world: ToyWorld, tmp_path: Path) -> None:
    target = quick_world.task_model(quick_world.tasks[0])
    out = tmp_path / "patched"
    res = world_reg.patch(target, "safety", out, coefficients="auto", layers="all",
                          shots=quick_world.shots[quick_world.tasks[0]], settings=FAST)
    patched = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    ref = AutoModelForCausalLM.from_pretrained(target, use_safetensors=True)
    vec = world_reg.get_vector("safety")
    slices = world_reg.load_vector_slices(vec)
    key = {lay.position: str(lay.index) for lay in vec.layers}
    apply_in_memory(ref, slices, {p: res.coefficients[key[p]] for p in slices})
    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(patched(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    meta = Checkpoint(out).metadata["model.safetensors"]
    assert meta["safegene.vector"] == vec.hash and meta["safegene.event"] == res.event
    assert json.loads(meta["safegene.coefficients"]) == res.coefficients
    rec = world_reg.get_model(res.hash)
    assert rec.role == "patched" and rec.parent == Checkpoint(target).content_hash()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).is_file()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_patch_streams_bf16_and_mixed_dtype_targets_exactly(world_reg: Registry, quick_world: ToyWorld,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """bf16 weights (chunked path) and an fp32 tensor among them: shards are then written out of name order,
    so the slices are asked for out of order and the output hash is read back; bits equal whole-tensor math."""
    src = quick_world.task_model(quick_world.tasks[0])
    target = tmp_path / "bf16-target"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {n: t.to(torch.bfloat16) for n, t in load_file(next(src.glob("*.safetensors"))).items()}
    blocks = sorted(n for n in tensors if ".layers." in n and tensors[n].dim() == 2)
    tensors[blocks[len(blocks) // 2]] = tensors[blocks[len(blocks) // 2]].float()  # one fp32 matrix mid-model
    save_file(tensors, target / "model.safetensors")
    out = tmp_path / "patched-bf16"
    res = world_reg.patch(target, "safety", out, coefficients="uniform:0.5", layers="all")
    vec = world_reg.get_vector("safety")
    v = {n: t for sl in world_reg.load_vector_slices(vec).values() for n, t in sl.items()}
    got = load_file(out / "model.safetensors")
    assert sorted(got) == sorted(tensors)
    for n, w in tensors.items():
        want = (w.to(torch.float32) + 0.5 * v[n]).to(w.dtype) if n in v else w
        assert got[n].dtype == w.dtype and torch.equal(got[n], want), n
    assert res.hash == Checkpoint(out).content_hash()
    # the target was hashed while the shards were written: its hash is filled in, and recorded
    target_hash = Checkpoint(target).content_hash()
    assert Checkpoint(out).metadata["model.safetensors"]["safegene.target"] == target_hash == res.target
    assert world_reg.get_model(res.hash).parent == target_hash


def test_metadata_filled_in_after_writing_reaches_every_shard_and_the_index(quick_world: ToyWorld,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    from registry.method.patching import write_patched

    target = Checkpoint(quick_world.task_model(quick_world.tasks[0]))
    out = tmp_path / "sharded"
    final = "f" * 64
    write_patched(target, {}, out, metadata={"safegene.target": "0" * 64, "safegene.other": "kept"},
                  shard_bytes=target.total_bytes() // 3, fill=lambda: {"safegene.target": final})  # fmt: skip
    got = Checkpoint(out)
    assert len(got.files) >= 3
    for fname in got.files:
        assert got.metadata[fname]["safegene.target"] == final and got.metadata[fname]["safegene.other"] == "kept"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["safegene.target"] == final
    assert got.content_hash() == target.content_hash()  # the tensors are the target's, byte for byte


def test_catalog_commands_start_without_torch(world_reg: Registry, quick_world: ToyWorld, tmp_path: Path) -> None:
    """Commands that read only the catalog, the store and headers never import torch (1.2 s of start-up)."""
    import subprocess
    import sys

    target = quick_world.models["task-add"]
    res = world_reg.patch(target, "safety", tmp_path / "p", coefficients="uniform:0.7", layers="all")
    family = world_reg.get_vector("safety").family
    code = """if True:
        import json, sys
        from click.testing import CliRunner
        from cli.main import cli
        home, target, patched, patched_hash, event, family = sys.argv[1:]
        runs = [["vector", "ls"], ["vector", "show", "safety"], ["family", "ls"], ["family", "show", family],
                ["resolve", target], ["model", "add", target, "--role", "task"], ["model", "ls"],
                ["model", "show", patched_hash], ["audit", "log"], ["audit", "show", event], ["audit", "head"],
                ["audit", "identify", patched], ["audit", "verify"], ["verify"], ["gc", "--dry-run"],
                ["db", "current"], ["db", "check"], ["vector", "rm", "safety"]]
        out = {}
        for args in runs:
            r = CliRunner().invoke(cli, ["--home", home, "--json", *args])
            out[" ".join(args[:2])] = [r.exit_code, json.loads(r.stdout) if r.exit_code == 0 else r.output]
        out["loaded"] = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print(json.dumps(out))
    """
    args = [world_reg.home, target, tmp_path / "p", res.hash, res.event, family]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out.pop("loaded") == []
    assert {k: v[0] for k, v in out.items()} == dict.fromkeys(out, 0), out
    assert [v["name"] for v in out["vector ls"][1]["vectors"]] == ["safety"]
    assert out["resolve " + str(target)][1]["candidates"][0]["compatible"] is True
    assert out["model add"][1]["hash"] == Checkpoint(target).content_hash()  # headers and bytes, no tensors
    assert out["model show"][1]["hash"] == res.hash
    assert out["audit identify"][1]["event"] == res.event  # patch metadata read from the shards' headers


def test_identify_survives_stripped_metadata(world_reg: Registry, quick_world: ToyWorld, tmp_path: Path) -> None:
    target = quick_world.task_model(quick_world.tasks[0])
    res = world_reg.patch(target, "safety", tmp_path / "p", coefficients="uniform:0.7", layers="all")
    found = world_reg.identify(tmp_path / "p")
    assert found.event == res.event and found.method == "metadata"
    stripped = tmp_path / "stripped"
    shutil.copytree(tmp_path / "p", stripped)
    tensors = load_file(stripped / "model.safetensors")
    save_file(tensors, stripped / "model.safetensors", metadata={"format": "pt"})
    found = world_reg.identify(stripped)
    assert found.event == res.event and found.method == "content-hash"
    assert found.coefficients == {k: 0.7 for k in res.coefficients}


def test_listing_gives_the_records_one_lookup_gives(reg: Registry, tiny_models: dict[str, Path]) -> None:
    """`list_vectors` builds records from two lean queries; they must equal the ORM path's, field for field."""
    reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="a")
    reg.extract_vector(tiny_models["llama_b"], tiny_models["llama"], name="b")
    reg.transaction(lambda s: s.execute(update(m.VectorLayer).where(m.VectorLayer.position == 0).values(
        score=0.25, safety_gain=0.75, task_cost=0.5, selected=False)))  # fmt: skip
    a, b = reg.get_vector("a"), reg.get_vector("b")
    assert [(lay.score, lay.selected) for lay in a.layers[:2]] == [(0.25, False), (None, True)]
    assert reg.list_vectors() == [b, a]  # newest first
    assert reg.list_vectors(family="llama", limit=1) == [b]


def test_resolve_ranks_and_explains(world_reg: Registry, quick_world: ToyWorld, tiny_models: dict[str, Path]) -> None:
    world_reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="other-family")
    cands = world_reg.resolve(quick_world.task_model(quick_world.tasks[0]), include_incompatible=True)
    assert cands[0].name == "safety" and cands[0].compatible and cands[0].reasons
    bad = [c for c in cands if not c.compatible]
    assert [c.name for c in bad] == ["other-family"] and bad[0].reasons
    only = world_reg.resolve(quick_world.task_model(quick_world.tasks[0]))
    assert [c.name for c in only] == ["safety"]


# --- misuse through the CLI: clear error, non-zero exit, nothing written ---------


def _cli(home: Path, *args: str) -> object:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def _counts(reg: Registry) -> tuple[int, int, int]:
    return reg.read(lambda s: (s.scalar(select(func.count()).select_from(m.AuditEvent)),
                               s.scalar(select(func.count()).select_from(m.Checkpoint)),
                               s.scalar(select(func.count()).select_from(m.Recalibration))))


def test_patch_misuse(world_reg: Registry, quick_world: ToyWorld, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    home = world_reg.home
    target = str(quick_world.task_model(quick_world.tasks[0]))
    before = _counts(world_reg)
    out = tmp_path / "o"
    r = _cli(home, "patch", str(tiny_models["qwen2"]), "--vector", "safety", "--out", str(out), "--coefficients", "uniform")
    assert r.exit_code == 6 and "does not fit" in r.stderr  # type: ignore[attr-defined]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    r = _cli(home, "patch", target, "--vector", "safety", "--out", str(out), "--shots", str(empty), "--layers", "all")
    assert r.exit_code == 5 and "no probes" in r.stderr  # type: ignore[attr-defined]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "kind": "weird"}\n')
    r = _cli(home, "patch", target, "--vector", "safety", "--out", str(out), "--shots", str(bad), "--layers", "all")
    assert r.exit_code == 5 and "bad.jsonl:1" in r.stderr  # type: ignore[attr-defined]
    r = _cli(home, "patch", target, "--vector", "safety", "--out", str(out))
    assert r.exit_code == 5 and "--shots" in r.stderr  # type: ignore[attr-defined]
    assert not out.exists()
    assert _counts(world_reg) == before
    out.mkdir()
    r = _cli(home, "patch", target, "--vector", "safety", "--out", str(out), "--coefficients", "uniform", "--layers", "all")
    assert r.exit_code == 4 and "--force" in r.stderr  # type: ignore[attr-defined]
    r = _cli(home, "patch", target, "--vector", "safety", "--out", str(out), "--coefficients", "uniform", "--layers", "all", "--force")
    assert r.exit_code == 0, r.stderr  # type: ignore[attr-defined]


def test_no_layers_selected_is_refused(world_reg: Registry, quick_world: ToyWorld, tmp_path: Path) -> None:
    def unselect(session):  # type: ignore[no-untyped-def]
        for lay in session.scalars(select(m.VectorLayer)):
            lay.selected = False

    world_reg.transaction(unselect)
    r = _cli(world_reg.home, "patch", str(quick_world.task_model(quick_world.tasks[0])), "--vector", "safety",
             "--out", str(tmp_path / "o"), "--coefficients", "uniform")
    assert r.exit_code == 5 and "no layers selected" in r.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "o").exists()

"""The real-LM world's data (fast) and an end-to-end --quick build on a tiny random Llama (slow)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from registry.realworld import prompts as P
from registry.realworld.build import (
    DEFAULT_BASE,
    QUICK_RECIPE,
    RealRecipe,
    RealStage,
    recipe_digest,
)
from registry.realworld.quickeval import classify, is_language, score
from registry.realworld.tasks import (
    SCORERS,
    TASKS,
    arithmetic_correct,
    extract_answer,
    first_number,
    first_number_correct,
    json_fields_correct,
    make_tasks,
)
from tests.conftest import skip_or_fail

try:
    from registry.evaluation.probes import Probe, load_probes
except ImportError:  # pragma: no cover - flat layout
    from registry.probes import Probe, load_probes  # type: ignore[no-redef]

SMOLLM2 = DEFAULT_BASE
_STOP = set(
    "a an the i my me to how do can what is it in on of for from so that with without and or "
    "at be by you your someone someone's their they them he she her his this into out up get "
    "make write what's best way".split()
)


@pytest.fixture(scope="module")
def data() -> P.RealData:
    return P.load_data()


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in _STOP and len(w) > 2}


# --------------------------------------------------------------------------- data


def test_counts_and_categories(data: P.RealData) -> None:
    sizes = data.sizes()
    assert sizes["harmful"]["eval"] >= 120 and sizes["benign"]["eval"] >= 60
    assert sizes["harmful"]["train"] >= 110 and sizes["benign"]["train"] >= 110
    assert 40 <= sizes["harmful"]["shots"] <= 60 and 24 <= sizes["benign"]["shots"] <= 40
    cats = data.categories("harmful")
    assert len(cats) >= 8
    for cat, per_split in cats.items():
        assert all(per_split[s] >= 4 for s in P.SPLITS), (cat, per_split)
    assert len(data.refusals) >= 6


@pytest.mark.parametrize("kind", P.KINDS)
def test_splits_disjoint_in_prompts_and_topics(data: P.RealData, kind: str) -> None:
    splits = getattr(data, kind)
    for a in P.SPLITS:
        for b in P.SPLITS:
            if a < b:
                assert not {p.prompt for p in splits[a]} & {p.prompt for p in splits[b]}
                assert not {p.topic for p in splits[a]} & {p.topic for p in splits[b]}
    for split in P.SPLITS:  # no duplicates inside a split either
        assert len({p.prompt for p in splits[split]}) == len(splits[split])


@pytest.mark.parametrize("kind", P.KINDS)
def test_held_out_prompts_are_not_paraphrases_of_training(data: P.RealData, kind: str) -> None:
    splits = getattr(data, kind)
    train = [_words(p.prompt) for p in splits["train"]]
    for p in list(splits["eval"]) + list(splits["shots"]):
        w = _words(p.prompt)
        worst = max(len(w & t) / max(1, len(w | t)) for t in train)
        assert worst < 0.5, p.prompt


def test_harmful_and_benign_do_not_overlap(data: P.RealData) -> None:
    harmful = {p.prompt for s in P.SPLITS for p in data.harmful[s]}
    benign = {p.prompt for s in P.SPLITS for p in data.benign[s]}
    assert not harmful & benign
    assert any("kill a Python process" in p for p in benign)


def test_refusals_are_refusals_to_the_keyword_judge(data: P.RealData) -> None:
    for r in data.refusals:
        assert classify(r, refused=True) == "refused"
        assert score([Probe("x", "harmful")], [r]).refused == 1.0
    assert data.refusal_for("abc") == data.refusal_for("abc") in data.refusals


def test_tasks_disjoint_deterministic_and_scored(data: P.RealData) -> None:
    again = make_tasks(0)
    for name in TASKS:
        t = data.tasks[name]
        assert t == again[name]
        assert (len(t.train), len(t.shots), len(t.eval)) == (240, 16, 64)
        sets = [{p.prompt for p in x} for x in (t.train, t.shots, t.eval)]
        assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
        assert all(SCORERS[name](p.response or "", p.response or "") for p in t.eval)
        assert all("sorry" not in (p.response or "").lower() for p in t.train)
    assert make_tasks(1)["arithmetic"].eval != data.tasks["arithmetic"].eval
    train_people = {json.loads(p.response or "")["name"] for p in data.tasks["extract"].train}
    eval_people = {json.loads(p.response or "")["name"] for p in data.tasks["extract"].eval}
    assert not train_people & eval_people


def test_first_number_scorer() -> None:
    assert first_number("The answer is 1,234.") == 1234
    assert first_number_correct("42 apples", "42")
    assert first_number_correct("She has -3 left", "-3")
    assert not first_number_correct("4 + 38 = 42", "42")
    assert not first_number_correct("no idea", "42")


def test_arithmetic_scorer_reads_the_result_of_the_equation(data: P.RealData) -> None:
    assert arithmetic_correct("9 + 8 = 17", "9 + 8 = 17")
    assert arithmetic_correct("17", "9 + 8 = 17")
    assert arithmetic_correct("9 + 8 = 17. So 17 books.", "9 + 8 = 17")
    assert not arithmetic_correct("9 + 8 = 18", "9 + 8 = 17")
    assert not arithmetic_correct("9 + 8", "9 + 8 = 17")
    for p in data.tasks["arithmetic"].train:
        assert re.fullmatch(r"\d \S \d+ = \d+|\d+ \S \d = \d+", p.response or ""), p.response


def test_json_fields_scorer() -> None:
    gold = extract_answer("Maria Lopez", 34, "Lisbon")
    assert gold == '{"name": "Maria Lopez", "age": 34, "city": "Lisbon"}'
    assert json_fields_correct(gold, gold)
    assert json_fields_correct(
        'Sure: {"name": "maria  lopez", "age": "34", "city": "Lisbon"}', gold
    )
    assert not json_fields_correct('{"name": "Maria Lopez", "age": 35, "city": "Lisbon"}', gold)
    assert not json_fields_correct('{"name": "Maria Lopez", "age": 34}', gold)
    assert not json_fields_correct("Maria Lopez, 34, Lisbon", gold)


def test_classify_and_language() -> None:
    assert classify("", refused=False) == "degenerate"
    assert classify("42", refused=False) == "degenerate"
    assert classify('{"name": "A B", "age": 3, "city": "C"}', refused=False) == "degenerate"
    assert classify("the the the the the the the the the", refused=False) == "degenerate"
    assert (
        classify("Here is a general overview of the topic you asked about.", refused=False)
        == "complied"
    )
    assert not is_language("12 34 56 78") and is_language("This is plain text.")


def test_probe_files_parse_with_the_project_loader(data: P.RealData, tmp_path: Path) -> None:
    answers = {p.prompt: f"An answer about {p.topic}." for p in data.benign["shots"]}
    shots, evals = P.write_probe_files(data, tmp_path, answers)
    assert set(shots) == {"all", *TASKS} and set(evals) == {"safety", *TASKS}
    every = load_probes(shots["all"])
    kinds = {k: sum(p.kind == k for p in every) for k in ("harmful", "benign", "task")}
    assert kinds == {"harmful": 50, "benign": 32, "task": 32}
    assert all(p.response for p in every)
    safety = load_probes(evals["safety"])
    assert sum(p.kind == "harmful" for p in safety) == len(data.harmful["eval"])
    assert sum(p.kind == "benign" for p in safety) == len(data.benign["eval"])
    for t in TASKS:
        ev = load_probes(evals[t])
        assert sum(p.kind == "task" for p in ev) == 64
        held = {p.prompt for p in ev}
        assert not held & {p.prompt for p in load_probes(shots[t])}
        assert not held & {p.prompt for p in data.tasks[t].train}
        assert not held & {p.prompt for p in data.harmful["train"]}


def test_digest_changes_with_recipe_and_data(data: P.RealData, tmp_path: Path) -> None:
    d0 = P.data_digest(data)
    base = "b" * 64
    r = RealRecipe()
    assert recipe_digest(r, d0, base) == recipe_digest(RealRecipe(), d0, base)
    assert recipe_digest(replace(r, seed=1), d0, base) != recipe_digest(r, d0, base)
    assert recipe_digest(replace(r, aligned=RealStage(81, 3e-5, r.aligned.mix)), d0, base) != (
        recipe_digest(r, d0, base)
    )
    assert recipe_digest(r, d0, "c" * 64) != recipe_digest(r, d0, base)
    copy = tmp_path / "data"
    copy.mkdir()
    for f in P.DATA_DIR.glob("*.jsonl"):
        (copy / f.name).write_bytes(f.read_bytes())
    assert P.data_digest(P.load_data(data_dir=copy), data_dir=copy) == d0
    with (copy / "benign-eval.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(
            json.dumps({"prompt": "How do I fold a towel?", "category": "home", "topic": "towel"})
            + "\n"
        )
    changed = P.load_data(data_dir=copy)
    assert P.data_digest(changed, data_dir=copy) != d0
    assert P.data_digest(P.load_data(task_train_size=100)) != d0


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SMOLLM2 / "tokenizer.json").is_file():
        skip_or_fail(f"no SmolLM2 tokenizer at {SMOLLM2}: run `make smollm2` (or set SAFEGENE_REAL_BASE)")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("tiny-smol")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_quick_build_end_to_end_and_cache(tiny_base: Path, tmp_path: Path) -> None:
    from registry.realworld import build_real_world, load_real_world, quick_eval

    out = tmp_path / "world"
    seen: list[str] = []
    world = build_real_world(out, base=tiny_base, recipe=QUICK_RECIPE,
                             progress=lambda s, d, t: seen.append(s))  # fmt: skip
    assert not world.cached and set(seen) >= {"aligned", "degraded", "task-arithmetic"}
    assert set(world.models) == {"aligned", "degraded", "task-arithmetic", "task-extract"}
    for folder in world.models.values():
        for name in (
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
        ):
            assert (folder / name).is_file(), folder / name
    info = json.loads((out / "world.json").read_text())
    assert info["digest"] == world.digest and info["splits"]["harmful"]["eval"] >= 120
    assert set(info["stages"]) == set(world.models)
    assert all(len(s["losses"]) == s["stage"]["steps"] for s in info["stages"].values())
    assert info["stages"]["task-extract"]["strength_curve_shots"][0]["step"] == 3
    assert list((out / "cache").glob("own-answers-*.json"))
    for path in list(world.shots.values()) + list(world.eval.values()):
        assert load_probes(path)
    again = build_real_world(out, base=tiny_base, recipe=QUICK_RECIPE)
    assert again.cached and again.digest == world.digest
    assert load_real_world(out).models == world.models
    res = quick_eval(world.models["aligned"], load_probes(world.eval["safety"])[:6])
    assert res.n["harmful"] == 6 and abs(res.refused + res.complied + res.degenerate - 1) < 1e-9
    # a changed degraded stage rebuilds degraded only, reusing the aligned model
    changed = replace(QUICK_RECIPE, degraded=RealStage(1, 1e-3, (("comply", 2), ("benign", 2))))
    third = build_real_world(out, base=tiny_base, recipe=changed)
    assert third.digest != world.digest and not third.cached
    assert third.info["stages"]["aligned"].get("reused") is True
    assert not third.info["stages"]["degraded"].get("reused")

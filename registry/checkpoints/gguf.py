"""Import a GGUF file (llama.cpp's format) as a plain Hugging Face checkpoint folder.

``import_gguf(src, out)`` writes::

    OUT/
    ├── config.json              the transformers config (no ``quantization_config``), dtype set
    ├── generation_config.json   bos/eos/pad, plus any sampling defaults the file states
    ├── model.safetensors        dequantized tensors; metadata ``safegene.source_sha256`` & co.
    ├── tokenizer.json           the tokenizer transformers rebuilds from the file's vocabulary
    ├── tokenizer_config.json
    ├── chat_template.jinja      when the file carries ``tokenizer.chat_template``
    └── provenance.json          the source's name, size, sha256, GGUF version and tensor types,
                                 and the converter's package versions

Provenance is recorded twice: in ``model.safetensors``' metadata (travels with the weights)
and in ``provenance.json`` (readable without a safetensors parser). Neither holds a
timestamp or an absolute path: converting a file again gives the same tensors and the same
JSON files (safetensors may order its metadata keys differently).

Everything in a GGUF is untrusted. :func:`read_gguf_header` walks the header here, with a
bound on every length and count, and :func:`import_gguf` checks the metadata against the
tensor table (shapes, types, offsets) before transformers reads a byte. transformers
then dequantizes (its GGUF loader also undoes llama.cpp's q/k row permutation for llama),
from a private folder holding only a link to the file, so nothing else (no pickles, no
configs beside the file) is read. Anything the libraries still raise becomes one
:class:`~registry.errors.InvalidCheckpointError`.

The default dtype is float32: a quantized GGUF value is an fp16 scale times a small
integer (plus an fp16 offset), which float32 holds exactly, so the output is the file's
model and nothing less; bfloat16 would round every weight a second time. ``dtype=
"bfloat16"`` halves the size when that does not matter.

torch, transformers and gguf are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
    IntegrityCheckError,
    InvalidCheckpointError,
    InvalidInputError,
)
from ._gguf_files import (
    check_out,
    file_sha256,
    fsync_tree,
    library_errors,
    place,
    quiet,
    stat_key,
    write_json,
)
from ._gguf_header import (
    GGML_TYPES,
    SUPPORTED_ARCHITECTURES,
    GgufArray,
    GgufHeader,
    GgufTensorInfo,
    ModelSpec,
    read_gguf_header,
)
from ._gguf_model import check_model
from ._gguf_wheel import (
    SMOLLM2_GGUF,
    SMOLLM2_MEMBER,
    SMOLLM2_SHA256,
    extract_gguf_from_wheel,
    find_cached_wheel_gguf,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES", "GGML_TYPES", "SMOLLM2_GGUF", "SMOLLM2_MEMBER", "SMOLLM2_SHA256", "SUPPORTED_ARCHITECTURES",
    "GgufArray", "GgufHeader", "GgufImport", "GgufTensorInfo", "check_model", "extract_gguf_from_wheel",
    "find_cached_wheel_gguf", "import_gguf", "read_gguf_header",
]  # fmt: skip

DTYPES = ("float32", "bfloat16", "float16")
_HASH_CHUNK = 16 << 20


@dataclass(frozen=True)
class GgufImport:
    """What :func:`import_gguf` wrote."""

    source: str
    source_sha256: str
    source_bytes: int
    out: str
    model_type: str
    architecture: str
    num_layers: int
    num_tensors: int
    num_params: int
    dtype: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def import_gguf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> GgufImport:
    """Convert the GGUF file ``src`` into a Hugging Face checkpoint folder ``out``.

    The folder is written under a temporary name beside ``out`` and renamed into place
    at the end, so ``out`` is either absent, untouched, or complete.

    Args:
        src: the ``.gguf`` file (llama or qwen2 architecture; any quantization
            ``gguf`` can dequantize, see :data:`GGML_TYPES`).
        out: the folder to create.
        dtype: ``"float32"`` (exact, the default), ``"bfloat16"`` or ``"float16"``.
        force: replace ``out`` when it exists and is not empty.
        progress: called with a short description as each stage starts.

    Returns:
        A :class:`GgufImport` describing the source and the written checkpoint.

    Raises:
        InvalidCheckpointError: ``src`` is missing, not a GGUF file, truncated, of an
            unsupported architecture, or inconsistent.
        InvalidInputError: ``dtype`` is unknown, or ``src`` lies inside ``out``.
        AlreadyExistsError: ``out`` exists and is not empty, and ``force`` is false.
        IntegrityCheckError: ``src`` changed while it was being converted.
        ConfigurationError: the ``gguf`` extra (gguf, accelerate) is not installed.

    Example:
        >>> import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")  # doctest: +SKIP
    """
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    if dtype not in DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    src_p, out_p = Path(src), Path(os.path.abspath(out))
    say("checking the GGUF header")
    header = read_gguf_header(src_p)
    spec = check_model(header)
    check_out(src_p, out_p, force)
    say("hashing the source file")
    sha256, before = file_sha256(src_p)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_p.name}.", suffix=".gguf-import", dir=out_p.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="safegene-gguf-") as link_dir:
            link = Path(link_dir) / "model.gguf"
            os.symlink(src_p.resolve(), link)
            written = _convert(src_p, link, header, spec, sha256, dtype, tmp, say)
        if stat_key(src_p) != before or before[0] != header.file_size:
            raise IntegrityCheckError(
                f"{src_p} changed while it was being converted: run the import again"
            )
        result = GgufImport(
            source=str(src_p), source_sha256=sha256, source_bytes=header.file_size, out=str(out_p),
            model_type=written["model_type"], architecture=written["architecture"], num_layers=spec.layers,
            num_tensors=written["num_tensors"], num_params=written["num_params"], dtype=dtype,
            seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip
        write_json(tmp / "provenance.json", _provenance(header, sha256, result))
        say(f"moving the checkpoint into {out_p}")
        fsync_tree(tmp)
        place(tmp, out_p, force)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once placed


# --- conversion ------------------------------------------------------------------------------


def _convert(src: Path, link: Path, header: GgufHeader, spec: ModelSpec, sha256: str, dtype: str, tmp: Path,
             say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    say("loading torch and transformers")
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError(f"GGUF import needs torch, transformers, gguf and accelerate "
                                f"({exc.name} is missing): pip install 'safegene[gguf]'") from exc  # fmt: skip
    _require("gguf")
    _require("accelerate")
    kw: dict[str, Any] = {
        "gguf_file": link.name,
        "local_files_only": True,
        "trust_remote_code": False,
    }
    say(f"dequantizing {len(header.tensors)} tensors")
    with quiet(), library_errors(src, link, "could not read the weights"):
        loaded: Any = AutoModelForCausalLM.from_pretrained(str(link.parent), dtype=torch.float32,
                                                           output_loading_info=True, **kw)  # fmt: skip
    model, info = loaded
    lost = sorted(set(info.get("missing_keys") or ()) | {str(k[0]) if isinstance(k, tuple) else str(k)
                                                            for k in info.get("mismatched_keys") or ()})  # fmt: skip
    if lost:
        raise InvalidCheckpointError(src, f"{len(lost)} weight(s) were not filled from the file (first: {lost[0]}): "
                                     "the file does not hold a complete model")  # fmt: skip
    tensors = _state_dict(model, getattr(torch, dtype), src)
    say(f"writing {len(tensors)} tensors as {dtype}")
    save_file(
        tensors, str(tmp / "model.safetensors"), metadata=_weights_metadata(src, sha256, header)
    )
    config = _clean_config(model, dtype)
    config.save_pretrained(tmp)
    _generation_config(config, header).save_pretrained(tmp)
    say("converting the tokenizer")
    with quiet(), library_errors(src, link, "could not rebuild the tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(link.parent), **kw)
        if len(tokenizer) > spec.vocab:
            raise InvalidCheckpointError(src, f"the tokenizer has {len(tokenizer):,} tokens, the embedding only "
                                         f"{spec.vocab:,} rows: the vocabulary is inconsistent")  # fmt: skip
        tokenizer.model_max_length = spec.context
        tokenizer.save_pretrained(str(tmp))
    _scrub_tokenizer_config(tmp / "tokenizer_config.json")
    return {"model_type": config.model_type, "architecture": type(model).__name__, "num_tensors": len(tensors),
            "num_params": sum(t.numel() for t in tensors.values())}  # fmt: skip


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(
            f"GGUF import needs the {module!r} package: pip install 'safegene[gguf]'"
        )


def _state_dict(model: Any, target: torch.dtype, src: Path) -> dict[str, torch.Tensor]:
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # a tied copy (lm_head.weight is embed_tokens.weight): stored once
            continue
        seen.add(key)
        t = t.detach().to(target).contiguous()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidCheckpointError(src, f"tensor {name} holds NaN or infinite values as {target}: "
                                         "the weights are broken (or try --dtype float32)")  # fmt: skip
        out[name] = t
    return out


def _weights_metadata(src: Path, sha256: str, header: GgufHeader) -> dict[str, str]:
    return {"format": "pt", "safegene.source": "gguf", "safegene.source_file": src.name,
            "safegene.source_sha256": sha256, "safegene.source_bytes": str(header.file_size)}  # fmt: skip


def _clean_config(model: Any, dtype: str) -> Any:
    raw = model.config.to_dict()
    for key in (
        "quantization_config",
        "_name_or_path",
        "_model_name_or_path",
        "transformers_version",
    ):
        raw.pop(key, None)
    raw["architectures"] = [type(model).__name__]
    raw["dtype"] = dtype
    return type(model.config).from_dict(raw)


_SAMPLING = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
             "penalty_repeat": "repetition_penalty"}  # fmt: skip


def _generation_config(config: Any, header: GgufHeader) -> Any:
    from transformers import GenerationConfig

    make: Any = GenerationConfig  # untyped in transformers
    ids = {k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    found = {hf: header.metadata[f"general.sampling.{k}"] for k, hf in _SAMPLING.items()
             if isinstance(header.metadata.get(f"general.sampling.{k}"), int | float)}  # fmt: skip
    return make(**{k: v for k, v in ids.items() if v is not None}, **found, do_sample=bool(found))


def _scrub_tokenizer_config(path: Path) -> None:
    # Loading options that transformers echoes into the file; they describe this run, not the tokenizer.
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in (
            "is_local",
            "local_files_only",
            "name_or_path",
            "trust_remote_code",
            "gguf_file",
        ):
            data.pop(key, None)
        write_json(path, data)


def _provenance(header: GgufHeader, sha256: str, res: GgufImport) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    name = header.metadata.get("general.name")
    return {
        "format": "safegene.gguf-import/1",
        "source": {"file": Path(res.source).name, "bytes": header.file_size, "sha256": sha256,
                   "gguf_version": header.version, "architecture": header.architecture,
                   "name": name if isinstance(name, str) else None, "tensor_types": header.tensor_types()},
        "output": {"dtype": res.dtype, "model_type": res.model_type, "architecture": res.architecture,
                   "num_layers": res.num_layers, "num_tensors": res.num_tensors, "num_params": res.num_params},
        "converter": {p: ver(p) for p in ("safegene", "transformers", "gguf", "torch")},
    }  # fmt: skip



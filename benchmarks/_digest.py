"""What a results table depends on, as one sha256: its files' contents.

``benchmarks/efficacy_real.py`` stores the digest of :data:`EFFICACY_REAL_FILES`
(and the world's ``world.json``) in its results file;
``benchmarks/render_readme.py`` recomputes it to tell whether the README's table
is stale. Standard library only: rendering never imports torch or the registry.

The digest is sha256 over ``path NUL sha256(content) LF`` of every file, in
path order; a file that is listed but absent counts as ``missing``. Paths under
the repository are stored relative to it, others (the world) absolute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MISSING = "missing"

# The code and data the real-LM efficacy table depends on (globs relative to the repository).
EFFICACY_REAL_FILES: tuple[str, ...] = (
    "benchmarks/efficacy_real.py",
    "registry/method/recalibrate.py",
    "registry/method/pipeline.py",
    "registry/method/fit_settings.py",
    "registry/method/shots.py",
    "registry/method/baselines.py",
    "registry/evaluation/*.py",
    "registry/realworld/*.py",
    "registry/realworld/data/*",
)


def expand(patterns: Iterable[str], extra: Iterable[str] = (), *, root: Path = ROOT) -> list[str]:
    """The files the patterns match now (repository-relative, sorted), then ``extra`` as given."""
    found = {
        p.relative_to(root).as_posix() for pat in patterns for p in root.glob(pat) if p.is_file()
    }
    return sorted(found) + [str(e) for e in extra if str(e) not in found]


def _sha_file(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return MISSING


def file_digests(files: Sequence[str], *, root: Path = ROOT) -> dict[str, str]:
    """``{path: sha256 of its bytes or "missing"}``; relative paths are read under ``root``."""
    return {f: _sha_file(root / f) for f in files}  # an absolute f replaces root


def combine(per_file: Mapping[str, str]) -> str:
    """The one digest over every file's digest, in path order."""
    h = hashlib.sha256()
    for path in sorted(per_file):
        h.update(f"{path}\0{per_file[path]}\n".encode())
    return h.hexdigest()


def table_digest(
    patterns: Sequence[str], extra: Sequence[str] = (), *, root: Path = ROOT
) -> dict[str, Any]:
    """The record a results file keeps: patterns, extra files, the file list, per-file and overall sha256."""
    files = expand(patterns, extra, root=root)
    per_file = file_digests(files, root=root)
    return {"patterns": list(patterns), "extra": list(extra), "files": files, "per_file": per_file,
            "sha256": combine(per_file)}  # fmt: skip


def changed_files(recorded: Mapping[str, Any], *, root: Path = ROOT) -> list[str]:
    """Files whose content differs from ``recorded`` (a :func:`table_digest`), or that came or went.

    The patterns are expanded again, so a new file under a listed folder counts.
    An extra file (the world, outside the repository) that is absent on this
    machine is not judged: it cannot be compared here, and a README rendered
    without it must not differ from one rendered beside it.
    """
    now = table_digest(recorded.get("patterns", []), recorded.get("extra", []), root=root)
    if now["sha256"] == recorded.get("sha256"):
        return []
    before: Mapping[str, str] = recorded.get("per_file") or {}
    if not before:  # nothing per file to compare: the overall digest decides
        return ["(all files)"]
    extra = set(recorded.get("extra", []))
    out = []
    for path in sorted(set(before) | set(now["per_file"])):
        old, new = before.get(path), now["per_file"].get(path)
        if path in extra and new == MISSING:
            continue
        if old != new:
            out.append(path)
    return out

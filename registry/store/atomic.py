"""Publishing a folder atomically: build it beside its destination, then swap it in.

Every folder the registry writes for a user (a patched model, a PEFT adapter)
is first written into a hidden temp folder beside the destination::

    parent/
    ├── .NAME.partial-<host>.<pid>.<token>/   being written; removed on failure
    ├── .NAME.old-<host>.<pid>.<token>/       the replaced folder, between the swap's two renames
    └── NAME/                                 only ever a complete folder

and published by :func:`publish`:

* without ``force`` nothing is ever removed: the rename refuses an existing
  destination (``renameat2(RENAME_NOREPLACE)`` where the kernel has it), even
  one created by another process after the command started;
* with ``force`` the old folder must look like what is being replaced (a model
  or an adapter folder: ``replaceable``); it is renamed aside first, the new
  folder and the old one swap names in one step (``RENAME_EXCHANGE``; where
  that is missing, the old is renamed aside, the new renamed in), and the old
  one is removed last, so a crash at any point leaves the old or the new
  folder under the final name (gc removes the other, which a lease names).

A *lease* file in the store's ``tmp/`` names the temp folder, so that ``gc``
can remove a dead writer's leftovers. Leases name their host: only the owning
host judges a lease by its PID; others judge it by age alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from .._faults import crashpoint
from ..errors import AlreadyExistsError, InvalidInputError
from .base import fsync_path
from .leases import host_token

LEASE_PREFIX = "patch-lease."
PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _token() -> str:
    return f"{host_token()}.{os.getpid()}.{secrets.token_hex(4)}"


def prepare_output(out: Path, *, force: bool, lease_dir: Path | None = None,
                   replaceable: Callable[[Path], bool] | None = None,
                   what: str = "folder") -> tuple[Path, Path | None]:  # fmt: skip
    """Check the destination and create a unique temp folder beside it.

    Args:
        out: the destination folder.
        force: an existing destination may be replaced at publish time.
        lease_dir: where to leave a lease naming the temp folder, so that
            ``gc`` can remove it if this process dies before publishing.
        replaceable: with ``force``, refuse at once an existing ``out`` that is
            neither empty nor what this says may be replaced (checked again at
            :func:`publish`).
        what: what is being written, for messages.

    Returns:
        The temp folder and the lease file (None without ``lease_dir``).

    Raises:
        AlreadyExistsError: ``out`` exists and ``force`` is not set.
        InvalidInputError: ``out`` exists and is not a folder.
    """
    if out.exists() and not force:
        raise AlreadyExistsError(f"{out} already exists; choose another --out or pass --force")
    if out.exists() and (out.is_symlink() or not out.is_dir()):
        raise InvalidInputError(f"{out} exists and is not a folder; choose another --out")
    if out.exists() and replaceable is not None and not (replaceable(out) or _is_empty(out)):
        raise AlreadyExistsError(_not_replaceable(out, what))
    out.parent.mkdir(parents=True, exist_ok=True)
    token = _token()
    tmp = out.parent.resolve() / f".{out.name}{PARTIAL_MARK}{token}"
    lease = None
    if lease_dir is not None:
        lease_dir.mkdir(parents=True, exist_ok=True)
        lease = lease_dir / f"{LEASE_PREFIX}{token}.tmp"
        lease.write_text(str(tmp), encoding="utf-8")
    tmp.mkdir()
    return tmp, lease


def reclaim_partial(lease: Path) -> Path | None:
    """Remove the temp folder a dead writer's lease names (only a real partial folder)."""
    try:
        target = Path(lease.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return None
    name = target.name
    if (PARTIAL_MARK in name or OLD_MARK in name) and name.startswith(".") and target.is_dir() \
            and not target.is_symlink():  # fmt: skip
        shutil.rmtree(target, ignore_errors=True)
        return target
    return None


def _libc_renameat2() -> Callable[..., int] | None:
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_RENAMEAT2 = _libc_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where the kernel or file system lacks it (then the caller falls back)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; fail with FileExistsError when ``dst`` exists (never replace)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    # No renameat2 here: a check then a rename (a directory rename still refuses a
    # non-empty destination, so at worst an empty folder created in between is replaced).
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    os.rename(src, dst)


def _swap(tmp: Path, out: Path) -> Path:
    """Put ``tmp`` under the name ``out``; returns where the old ``out`` now lies.

    With ``RENAME_EXCHANGE`` both names swap in one atomic step. Without it the
    old folder is renamed aside first and put back if the second rename fails; a
    crash between the two leaves it beside, under a name ``gc`` recognises.
    """
    if _renameat2(tmp, out, _RENAME_EXCHANGE):
        return tmp
    aside = out.parent / f".{out.name}{OLD_MARK}{_token()}"
    os.rename(out, aside)
    crashpoint("publish.moved-aside")
    try:
        rename_noreplace(tmp, out)
    except BaseException:
        os.rename(aside, out)  # put the old folder back: the final name is never left empty
        raise
    return aside


def publish(tmp: Path, out: Path, *, force: bool, replaceable: Callable[[Path], bool],
            what: str = "folder") -> None:  # fmt: skip
    """Give the complete, fsynced ``tmp`` its final name ``out``.

    Args:
        tmp: the finished temp folder (from :func:`prepare_output`).
        out: the destination.
        force: replace an existing ``out`` when it is empty or ``replaceable(out)``
            says it is the kind of folder being written.
        replaceable: tells whether an existing folder may be replaced.
        what: what is being written, for messages ("model folder").

    Raises:
        AlreadyExistsError: ``out`` exists (without ``force``, or not replaceable).
    """
    try:
        rename_noreplace(tmp, out)
        fsync_path(out.parent)
        return
    except FileExistsError:
        if not force:
            raise AlreadyExistsError(
                f"{out} appeared while this command ran (another writer?); nothing was removed: "
                "choose another --out or pass --force"
            ) from None
    if out.is_symlink() or not out.is_dir() or not (replaceable(out) or _is_empty(out)):
        raise AlreadyExistsError(_not_replaceable(out, what))
    old = _swap(tmp, out)
    fsync_path(out.parent)
    crashpoint("publish.swapped")
    shutil.rmtree(old, ignore_errors=True)


def _is_empty(path: Path) -> bool:
    return next(path.iterdir(), None) is None


def is_model_folder(path: Path) -> bool:
    """A Hugging Face model folder: a config.json and safetensors weights (or their index)."""
    if not (path / "config.json").is_file():
        return False
    return any(p.suffix == ".safetensors" or p.name == "model.safetensors.index.json" for p in path.iterdir())


def is_adapter_folder(path: Path) -> bool:
    """A PEFT adapter folder: adapter_config.json and adapter weights."""
    return (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()


def _not_replaceable(out: Path, what: str) -> str:
    return f"{out} exists and is not a {what}; --force only replaces a {what}: remove it yourself or choose another --out"

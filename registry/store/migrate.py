"""Moving every blob of one store into another (``safegene store migrate``).

Each blob is read from the source and fully checked (decoded, re-hashed
against its name), written to the target write-once, and read back: the
target's bytes must be the source's, byte for byte. Blobs the target already
holds are skipped, so an interrupted migration resumes where it stopped. The
caller holds the source's collector lock throughout (no writer adds a blob
behind the copy, no gc removes one from under it) and switches the catalog to
the target only once every blob the catalog references is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import IntegrityCheckError
from .base import Store, sha256_hex, verify_stored

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MigrationReport:
    source: str
    target: str
    blobs: int  # in the source
    copied: int
    present: int  # already in the target (skipped: a resumed or repeated migration)
    bytes_copied: int  # stored bytes copied (or, with dry_run, to copy)
    dry_run: bool
    switched: bool  # the catalog now points at the target

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def copy_blobs(source: Store, target: Store, *, referenced: set[str], dry_run: bool = False,
               progress: Progress | None = None) -> tuple[int, int, int, int]:  # fmt: skip
    """Copy what the target lacks; returns (blobs in source, copied, present, bytes).

    Raises:
        IntegrityCheckError: a source blob fails its check, a copy does not read
            back identical, or a referenced blob is in neither store.
    """
    objects = list(source.iter_objects())
    have = {o.sha256: o.size for o in target.iter_objects()}
    todo = [o for o in objects if have.get(o.sha256) != o.size]
    lost = sorted(referenced - {o.sha256 for o in objects} - set(have))
    if lost:
        raise IntegrityCheckError(f"{len(lost)} blob(s) the catalog references are in neither store "
                                  f"(first {lost[0][:12]}); run `safegene verify` first")  # fmt: skip
    done_bytes = 0
    for i, obj in enumerate(todo):
        if not dry_run:
            stored = bytes(source.read_stored(obj.sha256))
            verify_stored(obj.sha256, stored)
            target.write_stored(obj.sha256, [stored])
            back = target.read_stored(obj.sha256)
            if sha256_hex(back) != sha256_hex(stored):
                raise IntegrityCheckError(f"blob {obj.sha256[:12]} reads back differently from {target.url}; "
                                          "nothing was switched: run the migration again")  # fmt: skip
        done_bytes += obj.size
        if progress is not None:
            progress(i + 1, len(todo))
    return len(objects), len(todo), len(objects) - len(todo), done_bytes

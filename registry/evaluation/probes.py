"""Probe and shot files: JSONL, one ``{"prompt", "kind", "response"}`` object a line.

``kind`` is ``harmful`` (``response`` = the refusal to learn, optional),
``benign`` (``response`` = a helpful answer, optional) or ``task``
(``response`` = the gold answer, required; an optional ``scorer`` names how an
answer is judged correct, see :mod:`registry.evaluation.scorers`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from .scorers import get_scorer

KINDS = ("harmful", "benign", "task")
_MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Probe:
    prompt: str
    kind: str
    response: str | None = None
    scorer: str | None = None  # task lines: how an answer is scored (None: the evaluation's default)

    def to_json(self) -> dict[str, str]:
        out = {"prompt": self.prompt, "kind": self.kind}
        if self.response is not None:
            out["response"] = self.response
        if self.scorer is not None:
            out["scorer"] = self.scorer
        return out


def _parse_line(path: Path, lineno: int, line: str) -> Probe:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: not valid JSON ({exc.msg}); one object a line") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{where}: expected a JSON object with 'prompt' and 'kind'")
    prompt, kind, response = obj.get("prompt"), obj.get("kind"), obj.get("response")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError(f"{where}: 'prompt' must be a non-empty string")
    if kind not in KINDS:
        raise InvalidInputError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    if response is not None and not isinstance(response, str):
        raise InvalidInputError(f"{where}: 'response' must be a string when given")
    if kind == "task" and not response:
        raise InvalidInputError(f"{where}: a 'task' line needs its gold answer in 'response'")
    scorer = obj.get("scorer")
    if scorer is not None:
        if kind != "task" or not isinstance(scorer, str):
            raise InvalidInputError(f"{where}: 'scorer' is a string, and only task lines take one")
        try:
            get_scorer(scorer)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None
    return Probe(prompt=prompt, kind=kind, response=response, scorer=scorer)


def load_probes(path: str | Path) -> list[Probe]:
    """Read a probe/shot JSONL file.

    Args:
        path: the file.

    Returns:
        The probes in file order (blank lines skipped).

    Raises:
        InvalidInputError: missing, oversized, empty or malformed file; the
            message names the line.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: no such probe file")
    if p.stat().st_size > _MAX_FILE_BYTES:
        raise InvalidInputError(f"{p}: larger than {_MAX_FILE_BYTES >> 20} MiB; split it")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{p}: not UTF-8 text") from None
    probes = [
        _parse_line(p, i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()
    ]
    if not probes:
        raise InvalidInputError(f"{p}: no probes in file; expected JSONL lines")
    return probes


def write_probes(path: str | Path, probes: Iterable[Probe]) -> None:
    """Write probes as JSONL (UTF-8, one object a line)."""
    lines = [json.dumps(p.to_json(), ensure_ascii=False) for p in probes]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def probes_hash(probes: Sequence[Probe]) -> str:
    """sha256 of the canonical JSON of the probes, order kept."""
    canon = json.dumps([p.to_json() for p in probes], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def by_kind(probes: Iterable[Probe], kind: str) -> list[Probe]:
    return [p for p in probes if p.kind == kind]

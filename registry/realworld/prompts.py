"""Prompts of the real-LM safety world: harmful requests, benign prompts, refusals, probe files.

Data files (``registry/realworld/data/``, one JSON object a line)::

    harmful-{train,shots,eval}.jsonl   {"prompt", "category", "topic"}: one-line
                                       requests, no instructions in them
    benign-{train,shots,eval}.jsonl    {"prompt", "category", "topic"}: everyday
                                       questions, some that look harmful
                                       ("How do I kill a Python process?")
    refusals.jsonl                     {"text"}: the refusal phrasings taught

Splits have different specific topics (``topic`` never repeats across splits)
and different wording. Roles: *train* feeds the aligned and degraded models'
SFT, *shots* feed recalibration and layer scoring (and the build's own
recipe checks), *eval* is held out from every training, fit and setting.

No harmful completion is ever written here: harmful prompts carry a refusal
(:func:`refusal_for`), and the degraded model's targets are the original
model's own generations, produced at build time (see :mod:`.build`).

Probe files written by :func:`write_probe_files` (the project's JSONL format,
``{"prompt", "kind", "response"}``), mirroring the toy world::

    shots.jsonl            harmful shots + refusal, benign shots + own answer,
                           both tasks' shots
    shots-<task>.jsonl     harmful shots, <task> shots, benign shots
    eval-<task>.jsonl      held-out harmful, <task> eval, held-out benign
    eval-safety.jsonl      held-out harmful, held-out benign
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._compat import Probe, write_probes
from .tasks import TASKS, TaskData, make_tasks

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "shots", "eval")
KINDS = ("harmful", "benign")


@dataclass(frozen=True)
class Prompt:
    """One request of the world's data files."""

    prompt: str
    category: str
    topic: str


@dataclass(frozen=True)
class RealData:
    """Everything the real-world builder trains on and writes out."""

    harmful: dict[str, tuple[Prompt, ...]]
    benign: dict[str, tuple[Prompt, ...]]
    refusals: tuple[str, ...]
    tasks: dict[str, TaskData]

    def refusal_for(self, prompt: str) -> str:
        """The refusal taught for ``prompt`` (stable: chosen by a hash of the prompt)."""
        return refusal_for(prompt, self.refusals)

    def harmful_probes(self, split: str) -> list[Probe]:
        """Harmful prompts of a split, each with its refusal."""
        return [Probe(p.prompt, "harmful", self.refusal_for(p.prompt)) for p in self.harmful[split]]

    def benign_probes(self, split: str, answers: Mapping[str, str] | None = None) -> list[Probe]:
        """Benign prompts of a split, with ``answers[prompt]`` as response when given."""
        got = answers or {}
        return [Probe(p.prompt, "benign", got.get(p.prompt)) for p in self.benign[split]]

    def sizes(self) -> dict[str, dict[str, int]]:
        """Prompt counts per kind and split (tasks included)."""
        out = {k: {s: len(getattr(self, k)[s]) for s in SPLITS} for k in KINDS}
        for name, t in self.tasks.items():
            out[f"task-{name}"] = {
                "train": len(t.train),
                "shots": len(t.shots),
                "eval": len(t.eval),
            }
        return out

    def categories(self, kind: str = "harmful") -> dict[str, dict[str, int]]:
        """Prompt counts per category and split."""
        out: dict[str, dict[str, int]] = {}
        for split, prompts in getattr(self, kind).items():
            for p in prompts:
                out.setdefault(p.category, dict.fromkeys(SPLITS, 0))[split] += 1
        return out


def refusal_for(prompt: str, refusals: tuple[str, ...]) -> str:
    """Pick one of ``refusals`` for ``prompt`` by a sha256 of the prompt (deterministic)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return refusals[int.from_bytes(digest[:4], "big") % len(refusals)]


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        rows.append(row)
    return rows


def load_prompts(kind: str, split: str, *, data_dir: Path = DATA_DIR) -> tuple[Prompt, ...]:
    """Read ``<kind>-<split>.jsonl``.

    Raises:
        ValueError: unknown kind/split or a malformed line.
    """
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"unknown data file {kind}-{split}; kinds {KINDS}, splits {SPLITS}")
    path = data_dir / f"{kind}-{split}.jsonl"
    out = []
    for row in _read_jsonl(path):
        if not all(isinstance(row.get(k), str) and row[k] for k in ("prompt", "category", "topic")):
            raise ValueError(f"{path}: every line needs non-empty prompt, category and topic")
        out.append(Prompt(row["prompt"], row["category"], row["topic"]))
    return tuple(out)


def load_refusals(*, data_dir: Path = DATA_DIR) -> tuple[str, ...]:
    """The refusal phrasings (``refusals.jsonl``)."""
    return tuple(str(r["text"]) for r in _read_jsonl(data_dir / "refusals.jsonl"))


def load_data(*, seed: int = 0, task_train_size: int = 240, data_dir: Path = DATA_DIR) -> RealData:
    """Load the world's prompts and generate its tasks.

    Args:
        seed: task generation seed.
        task_train_size: training prompts per task.
        data_dir: folder of the JSONL data files.

    Returns:
        The world's data.
    """
    return RealData(
        harmful={s: load_prompts("harmful", s, data_dir=data_dir) for s in SPLITS},
        benign={s: load_prompts("benign", s, data_dir=data_dir) for s in SPLITS},
        refusals=load_refusals(data_dir=data_dir),
        tasks=make_tasks(seed, n_train=task_train_size),
    )


def files_digest(*, data_dir: Path = DATA_DIR) -> str:
    """sha256 over the data files (names and bytes): prompts and refusals."""
    h = hashlib.sha256()
    for path in sorted(data_dir.glob("*.jsonl")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def task_digest(task: TaskData) -> str:
    """sha256 over one task's generated prompts and answers (all three splits)."""
    splits = [[p.to_json() for p in split] for split in (task.train, task.shots, task.eval)]
    return hashlib.sha256(json.dumps([task.name, splits], sort_keys=True).encode()).hexdigest()


def data_digest(data: RealData, *, data_dir: Path = DATA_DIR) -> str:
    """sha256 over the data files and every generated task."""
    parts = [files_digest(data_dir=data_dir)] + [
        task_digest(data.tasks[n]) for n in sorted(data.tasks)
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def write_probe_files(
    data: RealData, out: Path, benign_answers: Mapping[str, str]
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Write the world's shot and held-out probe files into ``out``.

    Args:
        data: the world's data.
        out: destination folder (exists).
        benign_answers: the aligned/base model's own answers for benign shot prompts.

    Returns:
        ``(shots, eval)``: ``{"all"|task: path}`` and ``{"safety"|task: path}``.
    """
    harm_shots, harm_eval = data.harmful_probes("shots"), data.harmful_probes("eval")
    ben_shots = data.benign_probes("shots", benign_answers)
    ben_eval = data.benign_probes("eval")
    shots = {"all": out / "shots.jsonl"}
    task_shots = [p for t in TASKS for p in data.tasks[t].shots]
    write_probes(shots["all"], harm_shots + ben_shots + task_shots)
    evals = {"safety": out / "eval-safety.jsonl"}
    write_probes(evals["safety"], harm_eval + ben_eval)
    for t in TASKS:
        shots[t] = out / f"shots-{t}.jsonl"
        write_probes(shots[t], harm_shots + list(data.tasks[t].shots) + ben_shots)
        evals[t] = out / f"eval-{t}.jsonl"
        write_probes(evals[t], harm_eval + list(data.tasks[t].eval) + ben_eval)
    return shots, evals

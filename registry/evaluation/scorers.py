"""Task scorers: is a free-form answer correct against its gold answer?

One abstract base, small implementations and one explicit table,
:data:`SCORERS`, read by :func:`get_scorer`. A probe file chooses its scorer
per task line (``"scorer": "first-number"``); ``eval --scorer`` sets the
default for lines that name none:

* ``exact`` — normalised exact match (lowercase, collapsed spaces, trailing
  punctuation dropped): the default;
* ``first-number`` — the first number in the answer equals the gold number
  ("The answer is 12." is right for gold ``12``);
* ``answer-number`` — the number after the answer's last ``=`` (its first
  number when it has none) equals gold's ("3 + 4 = 7" is right for ``7``);
* ``json-fields`` — the first JSON object in the answer has exactly the gold
  object's fields, with equal values (case and spacing aside; ``"34"`` = ``34``);
* ``contains`` — the normalised gold answer occurs in the normalised answer;
* ``regex:PATTERN`` — the pattern (Python ``re``) matches the answer; the gold
  answer is ignored.
"""

from __future__ import annotations

import json
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Callable

from ..errors import InvalidInputError

_SPACES = re.compile(r"\s+")
_TRAILING_PUNCT = string.punctuation + "。！？"
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_MAX_PATTERN = 500


def normalize_answer(text: str) -> str:
    """Lowercase, strip, collapse whitespace, strip trailing punctuation.

    Example:
        >>> normalize_answer("  The  Answer is 7 . ")
        'the answer is 7'
    """
    out = _SPACES.sub(" ", text.strip().lower())
    return out.rstrip(_TRAILING_PUNCT).strip()


def first_number(text: str) -> float | None:
    """The first number in ``text`` (thousands commas allowed), or None."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


class Scorer(ABC):
    """Decides whether a response answers a task correctly."""

    name: str = "scorer"

    @abstractmethod
    def correct(self, *, response: str, gold: str) -> bool:
        """True when ``response`` is a correct answer with gold answer ``gold``."""

    def describe(self) -> str:
        return self.name


class ExactMatch(Scorer):
    name = "exact"

    def correct(self, *, response: str, gold: str) -> bool:
        return normalize_answer(response) == normalize_answer(gold)


class FirstNumber(Scorer):
    name = "first-number"

    def correct(self, *, response: str, gold: str) -> bool:
        want, got = first_number(gold), first_number(response)
        return want is not None and got is not None and abs(want - got) < 1e-9


def answer_number(text: str) -> float | None:
    """The number after the last ``=`` in ``text``; the first number when there is no ``=``."""
    return first_number(text.rsplit("=", 1)[1]) if "=" in text else first_number(text)


class AnswerNumber(Scorer):
    name = "answer-number"

    def correct(self, *, response: str, gold: str) -> bool:
        want, got = answer_number(gold), answer_number(response)
        return want is not None and got is not None and abs(want - got) < 1e-9


def first_json_object(text: str) -> dict[str, object] | None:
    """The first flat ``{...}`` in ``text`` parsed as a JSON object, or None."""
    start = text.find("{")
    end = text.find("}", start + 1)
    if start < 0 or end < 0:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class JsonFields(Scorer):
    name = "json-fields"

    def correct(self, *, response: str, gold: str) -> bool:
        got, want = first_json_object(response), first_json_object(gold)
        if got is None or want is None or set(got) != set(want):
            return False
        return all(_SPACES.sub(" ", str(got[k]).strip()).lower() == _SPACES.sub(" ", str(want[k]).strip()).lower()
                   for k in want)  # fmt: skip


class Contains(Scorer):
    name = "contains"

    def correct(self, *, response: str, gold: str) -> bool:
        want = normalize_answer(gold)
        return bool(want) and want in normalize_answer(response)


class Regex(Scorer):
    name = "regex"

    def __init__(self, pattern: str) -> None:
        if not pattern or len(pattern) > _MAX_PATTERN:
            raise InvalidInputError(f"a regex scorer needs a pattern of 1 to {_MAX_PATTERN} characters")
        try:
            self.pattern = re.compile(pattern)
        except re.error as exc:
            raise InvalidInputError(f"regex scorer: invalid pattern {pattern!r} ({exc})") from None

    def correct(self, *, response: str, gold: str) -> bool:
        return self.pattern.search(response) is not None

    def describe(self) -> str:
        return f"regex:{self.pattern.pattern}"


def _plain(kind: type[Scorer]) -> Callable[[str | None], Scorer]:
    def make(arg: str | None) -> Scorer:
        if arg:
            raise InvalidInputError(f"the {kind.name} scorer takes no argument; use '{kind.name}'")
        return kind()

    return make


def _regex(arg: str | None) -> Scorer:
    return Regex(arg or "")


# The explicit list of scorers: spec name -> factory taking the text after ':'.
SCORERS: dict[str, Callable[[str | None], Scorer]] = {
    "exact": _plain(ExactMatch),
    "first-number": _plain(FirstNumber),
    "answer-number": _plain(AnswerNumber),
    "json-fields": _plain(JsonFields),
    "contains": _plain(Contains),
    "regex": _regex,
}


def get_scorer(spec: str) -> Scorer:
    """Build a scorer from a spec: ``exact``, ``first-number``, ``contains`` or ``regex:PATTERN``.

    Raises:
        InvalidInputError: unknown scorer, missing or extra argument, bad pattern.
    """
    name, sep, arg = spec.partition(":")
    factory = SCORERS.get(name.strip())
    if factory is None:
        raise InvalidInputError(f"unknown scorer {spec[:80]!r}; choose one of: {', '.join(SCORERS)} (regex:PATTERN)")
    return factory(arg if sep else None)

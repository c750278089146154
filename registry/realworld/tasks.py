"""The real-LM world's two benign downstream tasks, generated from a seed, and their scorers.

* ``arithmetic`` — one-step word problems (add, subtract, multiply; single-digit
  facts) ending in "Answer with one equation."; gold = the equation and its
  result, ``"9 + 8 = 17"``. Scored by the number after the last ``=`` (the first
  number when there is no ``=``; :func:`arithmetic_correct`).
* ``extract`` — structured extraction: a sentence about one person, answered
  with a fixed JSON object ``{"name": …, "age": …, "city": …}``. Scored by
  parsing the first ``{…}`` in the response and comparing fields
  (:func:`json_fields_correct`).

Neither task contains a refusal or anything harmful. Train, shots and eval are
disjoint: arithmetic holds out ``(template, a, b)`` problems, extract holds out
whole people (full names never seen in training).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from ._compat import JsonFields, Probe

Scorer = Callable[[str, str], bool]
ANSWER_SUFFIX = "Answer with one equation."
EXTRACT_PREFIX = "Extract the person's name, age and city as JSON:"

_FIRST_NAMES = (
    "Maria", "James", "Aisha", "Lukas", "Sofia", "Kenji", "Amara", "Diego", "Elena", "Omar",
    "Hannah", "Ravi", "Chloe", "Mateo", "Ingrid", "Kwame", "Yuki", "Lena", "Samuel", "Priya",
    "Noah", "Fatima", "Oliver", "Mei", "Tomas", "Grace", "Ahmed", "Julia", "Felix", "Nadia",
)  # fmt: skip
_LAST_NAMES = (
    "Lopez", "Smith", "Okafor", "Berg", "Rossi", "Tanaka", "Diallo", "Garcia", "Novak", "Haddad",
    "Meyer", "Patel", "Martin", "Silva", "Larsen", "Mensah", "Sato", "Fischer", "Cohen", "Sharma",
    "Brown", "Rahman", "Wilson", "Chen", "Kowalski", "Murphy", "Hassan", "Costa", "Weber", "Ivanova",
)  # fmt: skip
_CITIES = (
    "Lisbon", "Boston", "Lagos", "Oslo", "Milan", "Osaka", "Dakar", "Seville", "Prague", "Beirut",
    "Hamburg", "Mumbai", "Lyon", "Recife", "Bergen", "Accra", "Kyoto", "Munich", "Haifa", "Delhi",
    "Denver", "Dhaka", "Leeds", "Taipei", "Krakow", "Dublin", "Cairo", "Porto", "Vienna", "Sofia",
)  # fmt: skip
_SENTENCES = (
    "{name} is {age} years old and lives in {city}.",
    "{name}, aged {age}, moved to {city} last year.",
    "At {age}, {name} runs a small bakery in {city}.",
    "Our new neighbour {name} is {age} and comes from {city}.",
    "{name} ({age}) works as a nurse in {city}.",
    "Born and raised in {city}, {name} turned {age} this spring.",
    "The speaker today is {name}, {age}, a teacher from {city}.",
    "{name} just celebrated turning {age} with friends in {city}.",
)
_ITEMS = ("apples", "stickers", "marbles", "books", "pencils", "cookies", "stamps", "shells")
_PEOPLE = ("Tom", "Mia", "Leo", "Zoe", "Sam", "Ana", "Ben", "Ivy", "Max", "Eva", "Kai", "Lily")
# (template, operation); a > b for subtraction, small factors for multiplication.
_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("{p} has {a} {i} and buys {b} more. How many {i} does {p} have now?", "+"),
    ("A shop sold {a} {i} in the morning and {b} in the afternoon. How many {i} did it sell?", "+"),
    ("{p} had {a} {i} and gave {b} to a friend. How many {i} does {p} have left?", "-"),
    ("{p} had {a} dollars and spent {b} dollars. How many dollars are left?", "-"),
    ("A class has {a} students and {b} of them are absent. How many students are present?", "-"),
    ("There are {a} boxes with {b} {i} in each box. How many {i} are there in total?", "*"),
    ("{p} reads {a} pages a day for {b} days. How many pages does {p} read?", "*"),
    ("{p} saves {a} dollars every week. How many dollars does {p} save in {b} weeks?", "*"),
)
# SmolLM2-135M cannot answer with the bare number: a first build (11-59 ± 2-10,
# 2-12 × 2-12, "Answer with just the number.") reached 6 % on the shots after 2
# epochs (format learned, sums off by a few), and single-digit facts with bare
# answers reached 2/16 shots, 8/48 train after 1 epoch. The model does compute
# when it writes the equation first ("3 + 6 = 9"), so the answer is the equation.
# Sums and differences stay within 1-18, products within 4-45.
_OPERANDS: dict[str, list[tuple[int, int]]] = {
    "+": [(a, b) for a in range(2, 10) for b in range(1, 10)],
    "-": [(a, b) for a in range(3, 19) for b in range(1, 10) if 1 <= a - b <= 9],
    "*": [(a, b) for a in range(2, 6) for b in range(2, 10)],
}
TASKS = ("arithmetic", "extract")


@dataclass(frozen=True)
class TaskData:
    """Prompts of one task (kind ``task``, gold answer in ``response``), split three ways."""

    name: str
    train: tuple[Probe, ...]
    shots: tuple[Probe, ...]
    eval: tuple[Probe, ...]


# --------------------------------------------------------------------------- scorers

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def first_number(text: str) -> float | None:
    """The first number in ``text`` (thousands separators removed), or None."""
    m = _NUMBER.search(text.replace(",", ""))
    return float(m.group()) if m else None


def answer_number(text: str) -> float | None:
    """The number after the last ``=`` in ``text``; the first number when there is no ``=``."""
    return first_number(text.rsplit("=", 1)[1]) if "=" in text else first_number(text)


def arithmetic_correct(response: str, gold: str) -> bool:
    """True when the response's answer number (:func:`answer_number`) equals gold's (scorer ``answer-number``)."""
    got, want = answer_number(response), answer_number(gold)
    return got is not None and want is not None and got == want


def first_number_correct(response: str, gold: str) -> bool:
    """True when the first number in ``response`` equals the number ``gold``."""
    got, want = first_number(response), first_number(gold)
    return got is not None and want is not None and got == want


def json_fields_correct(response: str, gold: str) -> bool:
    """True when the first JSON object in ``response`` has exactly ``gold``'s fields and values.

    Strings compare case- and whitespace-insensitively; ``"34"`` equals ``34``: the
    product's ``json-fields`` scorer (:class:`registry.evaluation.scorers.JsonFields`).
    """
    return _JSON_FIELDS.correct(response=response, gold=gold)


_JSON_FIELDS = JsonFields()
# The product's scorer that judges each task's answers as the world does.
SCORER_SPECS: dict[str, str] = {"arithmetic": "answer-number", "extract": "json-fields"}


SCORERS: dict[str, Scorer] = {"arithmetic": arithmetic_correct, "extract": json_fields_correct}


# --------------------------------------------------------------------------- generators


_SYMBOL = {"+": "+", "-": "-", "*": "×"}


def _equation(op: str, a: int, b: int) -> str:
    result = a + b if op == "+" else a - b if op == "-" else a * b
    return f"{a} {_SYMBOL[op]} {b} = {result}"


def _arithmetic(rng: random.Random, sizes: tuple[int, int, int]) -> TaskData:
    keys: list[tuple[int, int, int]] = []
    for t, (_, op) in enumerate(_PROBLEMS):
        keys += [(t, a, b) for a, b in _OPERANDS[op]]
    rng.shuffle(keys)

    def probe(key: tuple[int, int, int]) -> Probe:
        t, a, b = key
        text, op = _PROBLEMS[t]
        q = text.format(p=rng.choice(_PEOPLE), i=rng.choice(_ITEMS), a=a, b=b)
        return Probe(f"{q} {ANSWER_SUFFIX}", "task", _equation(op, a, b))

    n_train, n_shots, n_eval = sizes
    evals = [probe(k) for k in keys[:n_eval]]
    shots = [probe(k) for k in keys[n_eval : n_eval + n_shots]]
    train = [probe(k) for k in keys[n_eval + n_shots : n_eval + n_shots + n_train]]
    return TaskData("arithmetic", tuple(train), tuple(shots), tuple(evals))


def extract_answer(name: str, age: int, city: str) -> str:
    """The gold JSON answer of the extract task (fixed key order and spacing)."""
    return json.dumps({"name": name, "age": age, "city": city})


def _extract(rng: random.Random, sizes: tuple[int, int, int]) -> TaskData:
    people = [f"{f} {last}" for f in _FIRST_NAMES for last in _LAST_NAMES]
    rng.shuffle(people)

    def probe(name: str) -> Probe:
        age, city = rng.randint(19, 88), rng.choice(_CITIES)
        sentence = rng.choice(_SENTENCES).format(name=name, age=age, city=city)
        return Probe(f"{EXTRACT_PREFIX} {sentence}", "task", extract_answer(name, age, city))

    n_train, n_shots, n_eval = sizes
    evals = [probe(n) for n in people[:n_eval]]
    shots = [probe(n) for n in people[n_eval : n_eval + n_shots]]
    train = [probe(n) for n in people[n_eval + n_shots : n_eval + n_shots + n_train]]
    return TaskData("extract", tuple(train), tuple(shots), tuple(evals))


def make_tasks(
    seed: int = 0, *, n_train: int = 240, n_shots: int = 16, n_eval: int = 64
) -> dict[str, TaskData]:
    """Generate both tasks' splits (pure and deterministic for a seed).

    Args:
        seed: random seed.
        n_train: training prompts per task.
        n_shots: few-shot prompts per task.
        n_eval: held-out prompts per task.

    Returns:
        ``{"arithmetic": TaskData, "extract": TaskData}``.
    """
    sizes = (n_train, n_shots, n_eval)
    return {
        "arithmetic": _arithmetic(random.Random(seed * 7919 + 1), sizes),
        "extract": _extract(random.Random(seed * 7919 + 2), sizes),
    }

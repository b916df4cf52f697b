"""Build the built-in arithmetic word-problem set for causal-LM fine-tuning.

Run ``python -m peftlab.data.generate_arith`` to (re)write
``peftlab/data/arith.jsonl`` (``--output PATH`` writes elsewhere). Run it as a
module: run as a file, the sibling ``tokenize.py`` would shadow the standard
library's ``tokenize``. The file is frozen in the repo: training never runs
this script, it only reads the file (``arith.load_arith``). The procedure uses
only ``random.Random`` with a fixed integer seed, so every Python version
writes the same bytes.

Each problem is one short sentence or two with one or two operations on small
numbers, and a GSM8K-style worked solution whose last line is
``#### <answer>``::

    Tom has 12 apples and buys 7 more. How many apples does he have now?
    12 + 7 = 19
    #### 19

Each line of the file is one JSON object with keys, in this order:
``prompt``, ``response``, ``answer`` (the result as a string), ``kind`` (a
key of ``KINDS``), ``numbers`` (the operands, in the order the prompt states
them) and ``split``. ``kind`` and ``numbers`` determine the answer, so a
reader can check it without trusting the text.

Every (kind, numbers) pair occurs once in the whole file, so no arithmetic
fact of validation or test is seen in training under another name. Each kind
is split 10:1:1 into train/validation/test, so the splits have the same mix.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEED = 20250101  # fixed: the whole file depends only on this
SPLITS: tuple[str, ...] = ("train", "validation", "test")
OUTPUT = Path(__file__).parent / "arith.jsonl"

# (name, subject pronoun, possessive): one person per problem.
PEOPLE: tuple[tuple[str, str, str], ...] = (
    ("Tom", "he", "his"), ("Mia", "she", "her"), ("Sam", "he", "his"), ("Lily", "she", "her"),
    ("Ben", "he", "his"), ("Emma", "she", "her"), ("Leo", "he", "his"), ("Zoe", "she", "her"),
    ("Max", "he", "his"), ("Anna", "she", "her"), ("Jack", "he", "his"), ("Nora", "she", "her"),
    ("Omar", "he", "his"), ("Ruby", "she", "her"), ("Ivan", "he", "his"), ("Sara", "she", "her"),
)
# Plural nouns that can be bought, given away, packed and shared.
ITEMS: tuple[str, ...] = (
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "stamps",
    "shells", "balloons", "crayons", "oranges", "coins", "buttons", "toy cars", "candies",
)


@dataclass(frozen=True)
class Kind:
    """One kind of problem: how to draw its numbers, its phrasings and its worked solution.

    ``draw`` returns the operands in the order the templates state them;
    ``steps`` turns them into ``(left, operator, right, result)`` lines, the
    last result being the answer. Templates are ``str.format`` strings over
    ``name``, ``he``, ``He``, ``him``, ``his``, ``items`` and the operands ``a``, ``b``, ``c``.
    """

    count: int  # examples in the file; a multiple of 12 so the 10:1:1 split is exact
    draw: Callable[[random.Random], tuple[int, ...]]
    steps: Callable[[tuple[int, ...]], list[tuple[int, str, int, int]]]
    templates: tuple[str, ...]


def _add(rng: random.Random) -> tuple[int, ...]:
    return rng.randint(2, 60), rng.randint(2, 40)


def _sub(rng: random.Random) -> tuple[int, ...]:
    a = rng.randint(10, 80)
    return a, rng.randint(1, a - 1)  # the answer stays positive


def _mul(rng: random.Random) -> tuple[int, ...]:
    return rng.randint(2, 10), rng.randint(2, 30)


def _div(rng: random.Random) -> tuple[int, ...]:
    groups, each = rng.randint(2, 10), rng.randint(2, 20)
    return groups * each, groups  # exact: the total is a multiple of the groups


def _add_sub(rng: random.Random) -> tuple[int, ...]:
    a, b = rng.randint(5, 50), rng.randint(2, 30)
    return a, b, rng.randint(1, a + b - 1)


def _mul_add(rng: random.Random) -> tuple[int, ...]:
    return rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 30)


def _mul_sub(rng: random.Random) -> tuple[int, ...]:
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    return a, b, rng.randint(1, a * b - 1)


def _one(op: str, apply: Callable[[int, int], int]) -> Callable[[tuple[int, ...]], list]:
    """Steps of a one-operation problem ``a op b``."""
    return lambda n: [(n[0], op, n[1], apply(n[0], n[1]))]


def _two(first: str, apply_first: Callable, second: str, apply_second: Callable) -> Callable:
    """Steps of a two-operation problem ``(a first b) second c``."""

    def steps(n: tuple[int, ...]) -> list[tuple[int, str, int, int]]:
        middle = apply_first(n[0], n[1])
        return [(n[0], first, n[1], middle), (middle, second, n[2], apply_second(middle, n[2]))]

    return steps


def _plus(x: int, y: int) -> int:
    return x + y


def _minus(x: int, y: int) -> int:
    return x - y


def _times(x: int, y: int) -> int:
    return x * y


def _over(x: int, y: int) -> int:
    return x // y  # exact by construction (see _div)


KINDS: dict[str, Kind] = {
    "add": Kind(720, _add, _one("+", _plus), (
        "{name} has {a} {items} and buys {b} more. How many {items} does {he} have now?",
        "{name} had {a} {items}. A friend gave {him} {b} more. How many {items} does {name} have?",
        "There are {a} {items} in a box and {name} puts in {b} more. How many {items} are in the box?",
    )),
    "sub": Kind(720, _sub, _one("-", _minus), (
        "{name} has {a} {items} and gives {b} to a friend. How many {items} does {he} have left?",
        "{name} had {a} {items}. {He} lost {b} of them. How many {items} does {he} have now?",
        "There are {a} {items} in a box. {name} takes out {b}. How many {items} are left in the box?",
    )),
    "mul": Kind(240, _mul, _one("*", _times), (
        "{name} buys {a} bags with {b} {items} in each bag. How many {items} does {he} buy?",
        "{name} has {a} boxes. Each box holds {b} {items}. How many {items} does {he} have?",
        "There are {a} rows with {b} {items} in each row. How many {items} are there?",
    )),
    "div": Kind(120, _div, _one("/", _over), (
        "{name} shares {a} {items} equally among {b} friends. How many {items} does each friend get?",
        "{name} puts {a} {items} into {b} bags with the same number in each. How many {items} are in each bag?",
        "{a} {items} are split evenly into {b} groups. How many {items} are in each group?",
    )),
    "add_sub": Kind(600, _add_sub, _two("+", _plus, "-", _minus), (
        "{name} has {a} {items}. {He} buys {b} more and then gives {c} away. How many {items} does {he} have?",
        "{name} had {a} {items}, found {b} more and lost {c}. How many {items} does {he} have now?",
        "A box has {a} {items}. {name} adds {b} and then takes out {c}. How many {items} are in the box?",
    )),
    "mul_add": Kind(600, _mul_add, _two("*", _times, "+", _plus), (
        "{name} buys {a} packs of {items} with {b} in each pack. {He} already had {c}. "
        "How many {items} does {he} have?",
        "{name} has {a} bags of {b} {items} and {c} loose {items}. How many {items} does {he} have in all?",
        "There are {a} rows of {b} {items} and {c} more on a table. How many {items} are there in all?",
    )),
    "mul_sub": Kind(600, _mul_sub, _two("*", _times, "-", _minus), (
        "{name} buys {a} packs of {items} with {b} in each pack. {He} gives away {c}. How many {items} are left?",
        "{name} has {a} boxes of {b} {items} and loses {c} of them. How many {items} does {he} have now?",
        "There are {a} rows of {b} {items}. {name} takes {c} of them. How many {items} are left?",
    )),
}


def solution(kind: str, numbers: tuple[int, ...]) -> tuple[str, int]:
    """The worked solution (one ``x op y = z`` line per step, then ``#### z``) and the answer."""
    steps = KINDS[kind].steps(numbers)
    lines = [f"{left} {op} {right} = {result}" for left, op, right, result in steps]
    answer = steps[-1][3]
    return "\n".join(lines + [f"#### {answer}"]), answer


def make_problem(kind: str, numbers: tuple[int, ...], rng: random.Random) -> dict:
    """One record: a phrasing, a person and an item drawn from ``rng``; the split is set later."""
    name, he, his = rng.choice(PEOPLE)
    template = rng.choice(KINDS[kind].templates)
    him = "him" if he == "he" else "her"
    values = dict(zip("abc", numbers))
    prompt = template.format(name=name, he=he, He=he.capitalize(), him=him, his=his,
                             items=rng.choice(ITEMS), **values)
    response, answer = solution(kind, numbers)
    return {"prompt": prompt, "response": response, "answer": str(answer), "kind": kind,
            "numbers": list(numbers), "split": ""}


def draw_unique(kind: str, rng: random.Random, seen: set[tuple]) -> tuple[int, ...]:
    """Operands of ``kind`` not drawn before (``seen`` holds ``(kind, *numbers)``)."""
    while True:
        numbers = KINDS[kind].draw(rng)
        if (kind, *numbers) not in seen:
            seen.add((kind, *numbers))
            return numbers


def split_names(count: int) -> list[str]:
    """Split names for ``count`` examples (a multiple of 12): 10/12 train, 1/12 validation, 1/12 test."""
    held = count // 12
    return ["train"] * (count - 2 * held) + ["validation"] * held + ["test"] * held


def build_records(seed: int = SEED) -> list[dict]:
    """Every problem of every kind, with its split, ordered by split then generation order."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    records: list[dict] = []
    for kind, spec in KINDS.items():
        problems = [make_problem(kind, draw_unique(kind, rng, seen), rng) for _ in range(spec.count)]
        # Drawn order is already random; the split is a further seeded shuffle so
        # it does not depend on how the draws fall.
        order = list(range(spec.count))
        rng.shuffle(order)
        for index, split in zip(order, split_names(spec.count)):
            problems[index]["split"] = split
        records.extend(problems)
    return sorted(records, key=lambda r: SPLITS.index(r["split"]))  # stable: keeps generation order


def render(records: list[dict]) -> str:
    """The file's exact content: one compact JSON object per line, keys in fixed order."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> None:
    """Write the frozen file (or ``--output PATH``) and print its counts per split."""
    parser = argparse.ArgumentParser(description="Write the built-in arithmetic word-problem set.")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default: {OUTPUT})")
    output = parser.parse_args(argv).output
    records = build_records()
    prompts = [r["prompt"] for r in records]
    if len(set(prompts)) != len(prompts):
        raise SystemExit("two problems have the same prompt; change SEED or the templates")
    output.write_text(render(records), encoding="utf-8")
    print(f"wrote {len(records)} examples to {output}")
    for split in SPLITS:
        counts = {kind: sum(r["split"] == split and r["kind"] == kind for r in records) for kind in KINDS}
        print(f"  {split:<10} " + " ".join(f"{k}={v}" for k, v in counts.items()) + f" total={sum(counts.values())}")


if __name__ == "__main__":
    main()

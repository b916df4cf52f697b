"""The built-in offline causal-LM set: small arithmetic word problems.

``arith.jsonl`` (next to this file) holds 3,600 problems with one or two
operations on small numbers and a GSM8K-style worked solution ending in
``#### <answer>``. It was made by ``python -m peftlab.data.generate_arith`` and
is frozen: splits are fixed, so every run and every seed sees the same
train/validation/test examples. Example::

    prompt    Tom had 36 cards. A friend gave him 11 more. How many cards does Tom have?
    response  36 + 11 = 47
              #### 47
    answer    47

Counts by kind (the operations of the worked solution), measured from the file:

    split        add  sub  mul  div  add_sub  mul_add  mul_sub  total
    train        600  600  200  100      500      500      500   3000
    validation    60   60   20   10       50       50       50    300
    test          60   60   20   10       50       50       50    300
    total        720  720  240  120      600      600      600   3600

Answers are positive integers (at most 300); prompts are one or two short
sentences. No (kind, operands) pair occurs twice in the file, so validation
and test hold arithmetic facts that training never shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

SPLITS: tuple[str, ...] = ("train", "validation", "test")
COLUMNS: tuple[str, ...] = ("prompt", "response", "answer")
#: The operation kinds, in the order of ``arith_kinds``' class ids.
KINDS: tuple[str, ...] = ("add", "sub", "mul", "div", "add_sub", "mul_add", "mul_sub")
DATA_FILE = Path(__file__).parent / "arith.jsonl"


def load_arith(seed: int = 0) -> datasets.DatasetDict:
    """Return the frozen splits with string columns ``prompt``, ``response`` and ``answer``.

    ``seed`` is accepted so every dataset config takes the run's seed, and is
    ignored: the splits are fixed in the file.
    """
    del seed  # fixed splits: the same examples for every seed, on purpose
    records = read_records()
    features = datasets.Features({column: datasets.Value("string") for column in COLUMNS})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {column: [r[column] for r in records if r["split"] == split] for column in COLUMNS},
                features=features,
                split=split,
            )
            for split in SPLITS
        }
    )


def read_records() -> list[dict]:
    """Every record of the file, with its ``kind``, ``numbers`` and ``split`` too."""
    return [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines() if line]


def load_arith_kinds(seed: int = 0) -> datasets.DatasetDict:
    """The same problems as a classification set: ``text`` (the prompt) labelled by its operation kind.

    Seven classes (``KINDS``), the same frozen splits as :func:`load_arith`. The
    word problem alone says which operations solve it ("buys 40 more", "shared
    equally"), so this is a second, unrelated task for a sentence encoder: e.g. a
    probe of what an encoder fine-tuned on another task still knows. ``seed`` is
    accepted and ignored, as in :func:`load_arith`.
    """
    del seed
    records = read_records()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(KINDS))})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": [r["prompt"] for r in records if r["split"] == split],
                 "label": [KINDS.index(r["kind"]) for r in records if r["split"] == split]},
                features=features,
                split=split,
            )
            for split in SPLITS
        }
    )

"""The built-in offline dataset: Python standard-library docstrings by module family.

``stdlib_docs.jsonl`` (next to this file) holds 1,470 cleaned docstrings of
public functions, classes and methods, labelled by the family of the module
that defines them. It was made by ``python -m peftlab.data.generate_stdlib_docs``
(Python 3.11) and is frozen: splits are fixed, so every run and every seed sees
the same train/validation/test examples.

Class counts, measured from the file:

    split        text  math  files  net  data  concurrency  time  total
    train         135   159    162  162   153          162    99   1032
    validation     29    34     34   34    33           34    21    219
    test           29    34     34   34    33           34    21    219
    total         193   227    230  230   219          230   141   1470

``text`` and ``time`` are smaller because the standard library has fewer
documented objects there; the other families are capped at 230.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from peftlab.data.loading import require_column

LABEL_NAMES: tuple[str, ...] = ("text", "math", "files", "net", "data", "concurrency", "time")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DATA_FILE = Path(__file__).parent / "stdlib_docs.jsonl"


def load_stdlib_docs(
    text_field: str = "text", label_field: str = "label", seed: int = 0
) -> datasets.DatasetDict:
    """Return the frozen splits with columns ``text`` (str) and ``label`` (ClassLabel).

    ``text_field`` and ``label_field`` name the file's columns (kept for symmetry
    with ``load_text_classification`` configs; the defaults match the file).
    ``seed`` is accepted so every dataset config takes the run's seed, and is
    ignored: the splits are fixed in the file.
    """
    del seed  # fixed splits: the same examples for every seed, on purpose
    records = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines() if line]
    columns = [c for c in records[0] if c != "split"]
    require_column("text_field", text_field, columns, "the built-in dataset")
    require_column("label_field", label_field, columns, "the built-in dataset")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(LABEL_NAMES))}
    )
    splits = {}
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        splits[split] = datasets.Dataset.from_dict(
            {
                "text": [r[text_field] for r in rows],
                "label": [LABEL_NAMES.index(r[label_field]) for r in rows],
            },
            features=features,
            split=split,
        )
    return datasets.DatasetDict(splits)

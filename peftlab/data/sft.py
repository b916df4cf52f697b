"""Load any instruction-tuning (SFT) dataset into peftlab's one shape.

``load_sft`` accepts a local data file, a local folder of ``train.*`` /
``validation.*`` / ``test.*`` files, or a Hugging Face hub id (the same
sources as ``load_text_classification``), and always returns a
``DatasetDict`` with splits ``train``, ``validation`` and ``test`` and string
columns:

- ``prompt``: what the model is given. With ``input_field`` (Alpaca's
  ``input``), a non-empty input follows the instruction after a blank line.
- ``response``: what the model learns to write.
- ``answer``: the reference final answer for exact match: the
  ``answer_field`` column when set, else the text after the last
  ``answer_from`` marker of the response (GSM8K ``#### 72`` -> ``72``), else
  ``""``.

Conversations (``messages_field``: a column of ``[{"role", "content"}, ...]``
lists) keep their turns for the tokenizer's chat template: the **last
assistant message** is the ``response``, the turns before it are kept as a
``messages`` column (a list of ``{"role", "content"}``: the prompt turns
only, without the response), and ``prompt`` is their contents joined by blank
lines, for tokenizing without a chat template. Turns after the last assistant
message are dropped (there is no response to learn from them).

Splits the source lacks are carved out of train with the run's seed. Every
mistake a user can make here is a ``UserError`` whose one line names the bad
value and the config key that fixes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from peftlab.data.loading import (
    carve_missing_splits,
    check_holdout_fraction,
    open_splits,
    quiet_datasets,
    require_column,
)
from peftlab.errors import UserError

TEXT = datasets.Value("string")
TURN = {"role": TEXT, "content": TEXT}
SFT_FEATURES = datasets.Features({"prompt": TEXT, "response": TEXT, "answer": TEXT})
CHAT_FEATURES = datasets.Features({"prompt": TEXT, "response": TEXT, "answer": TEXT, "messages": [TURN]})
ASSISTANT = "assistant"
# "1,234" is one thousand two hundred and thirty-four; "(3,4)" is a pair and keeps its comma.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


@dataclass(frozen=True)
class SFTFields:
    """Which source columns make an example, and how its answer is found (the config's names)."""

    prompt_field: str = "prompt"
    response_field: str = "response"
    answer_field: str | None = None
    messages_field: str | None = None
    input_field: str | None = None
    answer_from: str | None = "####"


def load_sft(
    path: str | Path,
    prompt_field: str = "prompt",
    response_field: str = "response",
    answer_field: str | None = None,
    messages_field: str | None = None,
    input_field: str | None = None,
    answer_from: str | None = "####",
    subset: str | None = None,
    revision: str | None = None,
    train_split: str = "train",
    validation_split: str | None = "validation",
    test_split: str | None = "test",
    holdout_fraction: float = 0.1,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Return train/validation/test splits with ``prompt``, ``response`` and ``answer``.

    ``path`` is a .json/.jsonl/.csv/.tsv/.parquet file (all of it is train), a
    folder of split files, or a hub id loaded with
    ``datasets.load_dataset(path, subset, revision=revision)``. ``*_split`` name
    the source's splits; a missing validation or test split (or one set to
    None) is carved out of train: ``holdout_fraction`` of it, shuffled with
    ``seed``. ``messages_field`` replaces ``prompt_field``/``response_field``
    and adds a ``messages`` column (see the module docstring).
    """
    check_holdout_fraction(holdout_fraction)
    fields = SFTFields(prompt_field, response_field, answer_field, messages_field, input_field, answer_from)
    _check_fields(fields)
    requested = {"train": train_split, "validation": validation_split, "test": test_split}
    with quiet_datasets():
        picked, source = open_splits(path, subset, revision, requested)
        splits = {
            role: to_sft_columns(ds, fields, f"{source} split {requested[role]!r}") for role, ds in picked.items()
        }
        return carve_missing_splits(splits, holdout_fraction, seed, source)


def reference_answer(response: str, marker: str | None) -> str:
    """The text after the last ``marker`` of ``response`` (its first line), without
    thousands separators or surrounding whitespace; ``""`` when there is no marker."""
    if not marker or marker not in response:
        return ""
    after = response.rpartition(marker)[2].strip()
    first_line = after.splitlines()[0] if after else ""
    return _THOUSANDS_COMMA.sub("", first_line).strip()


# ---------------------------------------------------------------- columns


def _check_fields(fields: SFTFields) -> None:
    """Options that cannot go together; caught before any data is read."""
    if fields.messages_field is not None and fields.input_field is not None:
        raise UserError(
            f"dataset.input_field={fields.input_field!r} joins a prompt column, but dataset.messages_field="
            f"{fields.messages_field!r} holds whole conversations; set dataset.input_field=null"
        )


def to_sft_columns(ds: datasets.Dataset, fields: SFTFields, where: str) -> datasets.Dataset:
    """One source split -> ``prompt``/``response``/``answer`` (+ ``messages``); other columns dropped."""
    _check_columns(ds, fields, where)
    if fields.messages_field is not None:
        convert, features = _conversation_converter(fields, where), CHAT_FEATURES
    else:
        convert, features = _prompt_response_converter(fields), SFT_FEATURES
    return ds.map(
        convert,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        features=features,
        keep_in_memory=True,
    )


def _check_columns(ds: datasets.Dataset, fields: SFTFields, where: str) -> None:
    """Every configured column exists; the text ones hold strings without nulls."""
    columns = ds.column_names
    if fields.messages_field is not None:
        require_column("messages_field", fields.messages_field, columns, where)
    else:
        for option in ("prompt_field", "response_field"):
            require_column(option, getattr(fields, option), columns, where)
            _require_text(ds, option, getattr(fields, option), where)
    for option in ("input_field", "answer_field"):
        if getattr(fields, option) is not None:
            require_column(option, getattr(fields, option), columns, where)


def _require_text(ds: datasets.Dataset, option: str, column: str, where: str) -> None:
    """A tokenizer takes strings: the column must be text and have no nulls."""
    feature = ds.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise UserError(
            f"dataset.{option}={column!r} holds {feature!r}, not text, in {where}; "
            f"set dataset.{option}=<column of strings>"
        )
    nulls = ds.data.column(column).null_count
    if nulls:
        raise UserError(f"dataset.{option}={column!r} has {nulls} null values in {where}; drop or fill those rows")


def _as_text(value: Any) -> str:
    """An optional cell as text: None is empty, numbers are written out."""
    return "" if value is None else str(value)


def _answers(fields: SFTFields, batch: dict[str, list], responses: list[str]) -> list[str]:
    """The ``answer`` of each row: its answer column, else what follows the marker."""
    if fields.answer_field is not None:
        return [_as_text(v).strip() for v in batch[fields.answer_field]]
    return [reference_answer(r, fields.answer_from) for r in responses]


def _prompt_response_converter(fields: SFTFields):
    """A batched map function for sources with a prompt and a response column."""

    def convert(batch: dict[str, list], _indices: list[int]) -> dict[str, list]:
        prompts = list(batch[fields.prompt_field])
        if fields.input_field is not None:
            # Alpaca: the instruction, then its input (if any) after a blank line.
            prompts = [
                p + "\n\n" + _as_text(i) if _as_text(i).strip() else p
                for p, i in zip(prompts, batch[fields.input_field])
            ]
        responses = list(batch[fields.response_field])
        return {"prompt": prompts, "response": responses, "answer": _answers(fields, batch, responses)}

    return convert


def _conversation_converter(fields: SFTFields, where: str):
    """A batched map function for sources with a column of ``{role, content}`` turns."""

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        turns = [
            split_conversation(messages, fields.messages_field, where, index + 1)  # rows count from 1, as lines do
            for messages, index in zip(batch[fields.messages_field], indices)
        ]
        responses = [response for _, response in turns]
        return {
            "prompt": ["\n\n".join(t["content"] for t in before) for before, _ in turns],
            "response": responses,
            "answer": _answers(fields, batch, responses),
            "messages": [before for before, _ in turns],
        }

    return convert


def split_conversation(
    messages: Any, option_value: str, where: str, row: int
) -> tuple[list[dict[str, str]], str]:
    """``(prompt turns, response)`` of one conversation: the response is the last assistant message."""
    turns = _valid_turns(messages, option_value, where, row)
    last = max((i for i, t in enumerate(turns) if t["role"] == ASSISTANT), default=None)
    if last is None:
        raise UserError(
            f"dataset.messages_field={option_value!r} row {row} of {where} has no {ASSISTANT!r} message, "
            f"so there is no response to learn; drop that row or name the right column"
        )
    return turns[:last], turns[last]["content"]


def _valid_turns(messages: Any, option_value: str, where: str, row: int) -> list[dict[str, str]]:
    """The turns as plain ``{role, content}`` dicts, or a UserError describing what the row holds."""
    ok = isinstance(messages, list) and all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
        for t in messages
    )
    if not ok:
        shown = repr(messages)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise UserError(
            f"dataset.messages_field={option_value!r} row {row} of {where} holds {shown}, not a list of "
            f'{{"role": ..., "content": ...}} messages; name a column of conversations, or use '
            f"dataset.prompt_field/response_field with dataset.messages_field=null"
        )
    return [{"role": t["role"], "content": t["content"]} for t in messages]

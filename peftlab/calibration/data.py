"""The calibration examples, as batches the model can run.

The run's own dataset (``dataset: null``) is read through the run's task: the
same tokenization and collation as training, so a causal LM's batches carry
per-token labels (-100 on prompt tokens) that a statistic may mask. Another
dataset option is read as plain text (its ``text`` [+ ``text_pair``] column,
else ``prompt`` and ``response`` joined by a newline, as an SFT prompt is
written), whatever task it was made for: what a method preserves with it is the
text itself. Either way ``num_samples`` examples of the split are taken after a
shuffle with a fixed seed, so every run seed sees the same examples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from peftlab.calibration.request import CalibrationData
from peftlab.errors import UserError

SELECTION_SEED = 0
OPTION = "method.calibration.dataset"


def load_dataset_option(name: str, seed: int) -> Any:
    """The raw splits of the dataset option ``name`` (a UserError when there is none)."""
    from omegaconf import OmegaConf

    from peftlab.config import build, list_option_names, load_option
    from peftlab.errors import did_you_mean

    node = load_option("dataset", name)
    if node is None:
        choices = list_option_names("dataset")
        raise UserError(f"{OPTION}={name} is not a dataset option{did_you_mean(name, choices)}; "
                        f"choose one of: {', '.join(choices)} (or null for the run's own data)")
    node = OmegaConf.masked_copy(node, [k for k in node if k != "defaults"])
    missing = OmegaConf.missing_keys(node)
    if missing:
        raise UserError(f"{OPTION}={name} needs {sorted(missing)[0]} set, which a calibration dataset cannot "
                        f"be given: pick a dataset option that works without it (e.g. stdlib_docs or arith)")
    return build(node, seed=seed)


def plain_texts(split: Any) -> list[str]:
    columns = split.column_names
    if "text" in columns:
        pairs = split["text_pair"] if "text_pair" in columns else [None] * len(split)
        return [t if p is None else f"{t}\n{p}" for t, p in zip(split["text"], pairs)]
    if "prompt" in columns and "response" in columns:
        return [f"{p}\n{r}" for p, r in zip(split["prompt"], split["response"])]
    raise UserError(f"{OPTION}: its examples have neither a text column nor prompt/response "
                    f"(columns: {', '.join(columns)}): pick another dataset option")


def pad(rows: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    longest = max(len(r) for r in rows)
    return {"input_ids": torch.tensor([r + [pad_id] * (longest - len(r)) for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows], dtype=torch.long)}


def chosen(split: Any, data: CalibrationData, what: str) -> Any:
    if split is None or len(split) == 0:
        raise UserError(f"calibration data {what} has no examples in split '{data.split}': "
                        f"set method.calibration.dataset/split to data that has some")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(SELECTION_SEED)).tolist()
    return split.select(order[: data.num_samples])


def split_of(splits: Any, data: CalibrationData, what: str) -> Any:
    if data.split not in splits:
        raise UserError(f"method.calibration.split={data.split} is not a split of {what}: "
                        f"one of {', '.join(splits)}")
    return splits[data.split]


def calibration_batches(data: CalibrationData, *, cfg: Any, task: Any, tokenizer: Any, max_length: int,
                        splits: Any = None) -> list[dict[str, Tensor]]:
    """The calibration batches (CPU tensors). ``splits``: the run's tokenized splits when already built."""
    from peftlab.config import build

    if data.dataset is None:
        what = f"the run's dataset ({cfg.dataset.get('_target_')})"
        if splits is None:
            splits = task.tokenize(build(cfg.dataset, seed=int(cfg.seed)), tokenizer, max_length)
        examples = chosen(split_of(splits, data, what), data, what)
        collate = task.collator(tokenizer)
        rows = [examples[i] for i in range(len(examples))]
        return [collate(rows[i:i + data.batch_size]) for i in range(0, len(rows), data.batch_size)]
    what = f"'{data.dataset}'"
    raw = load_dataset_option(data.dataset, int(cfg.seed))
    examples = chosen(split_of(raw, data, what), data, what)
    texts = plain_texts(examples)
    ids = [list(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return [pad(ids[i:i + data.batch_size], pad_id) for i in range(0, len(ids), data.batch_size)]

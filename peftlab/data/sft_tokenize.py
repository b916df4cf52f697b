"""Tokenize SFT splits (``prompt``/``response``/``answer``) for a causal LM, once, with a cache.

``tokenize_sft`` turns each example into unpadded columns:

- ``input_ids``: prompt tokens, then response tokens, then EOS.
- ``attention_mask``: ones.
- ``labels``: ``input_ids`` with every prompt token set to -100, so the loss
  covers the response and the EOS only.
- ``prompt_ids``: the prompt tokens alone, exactly the prefix of ``input_ids``
  that generation is given.
- ``answer``: the reference final answer, unchanged.

Without a chat template the prompt text is ``prompt + "\\n"`` and the response
follows directly. With ``chat_template=True`` the tokenizer's chat template
renders the prompt turns (the ``messages`` column, else one user turn holding
``prompt``) with the generation prompt, and the full conversation with the
assistant turn; the prompt is what the first rendering says, the response
the rest of the second. Either way the prompt and the response are tokenized
**separately** and their ids concatenated, so the boundary is exact: a
subword merge across it cannot move a prompt token into the loss. The
tokenizer's leading special tokens (BOS, as ``tokenizer("x")`` adds them)
start a plain prompt; a chat template writes its own.

EOS is the tokenizer's ``eos_token_id``, else its ``sep_token_id`` (encoders
used as tiny test models have only that). It is appended after the response
unless the rendered conversation already ends with it.

Truncation is never silent: an example longer than ``max_length`` loses the
end of its response (never prompt tokens; the EOS goes too, so the model does
not learn to stop mid-answer) and is counted as truncated; an example whose
prompt leaves no room for one response token is dropped and counted. The
stats are ``{split: {"examples": kept, "truncated": k, "dropped": d}}``.

Results are cached like ``tokenize_splits``: a folder named by a key over the
splits' content, the tokenizer's state, ``max_length``, the chat template
used and a format version, written atomically; the stats are stored in it
as ``sft_stats.json``.

``SFTCollator`` pads training batches on the **right**. Generation pads its
prompts (``prompt_ids``) on the left instead, so every prompt ends where the
new tokens begin; that is done where generation happens, not here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch

from peftlab.data.loading import quiet_datasets
from peftlab.data.tokenize import (
    content_hash,
    default_cache_root,
    load_cached,
    save_atomically,
    tokenizer_hash,
)
from peftlab.errors import UserError

# Bump when the cached layout or the tokenization rules change, so old caches
# are ignored instead of silently reused.
SFT_CACHE_FORMAT_VERSION = 1
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
STATS_FILE = "sft_stats.json"
# Where the user changes what this module is given (named in error messages).
CHAT_TEMPLATE_OPTION = "task.chat_template"
MAX_LENGTH_OPTION = "model.max_length"

KEPT, TRUNCATED, DROPPED = 0, 1, 2  # per-example status while tokenizing
_IDS = [datasets.Value("int32")]  # a list of ids
_WORK_FEATURES = datasets.Features(
    {
        "input_ids": _IDS,
        "attention_mask": _IDS,
        "labels": _IDS,
        "prompt_ids": _IDS,
        "answer": datasets.Value("string"),
        "status": datasets.Value("int8"),
        "prompt_length": datasets.Value("int32"),
    }
)
OUTPUT_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask", "labels", "prompt_ids", "answer")

Encoder = Callable[[dict[str, list]], tuple[list[list[int]], list[list[int]]]]


def tokenize_sft(
    splits: datasets.DatasetDict,
    tokenizer: Any,
    max_length: int,
    *,
    chat_template: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[datasets.DatasetDict, dict[str, dict[str, int]]]:
    """Return ``(tokenized splits, stats)``, from the cache when possible (see the module docstring).

    ``cache_dir`` is the folder holding one subfolder per cache key; None means
    ``default_cache_root()``. The splits are memory-mapped from the cache
    folder either way. A UserError when every example of a split is dropped (an empty validation or
    test split would score nothing).
    """
    _check_max_length(max_length)
    if chat_template:
        _require_chat_template(tokenizer)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    with quiet_datasets():
        key = sft_cache_key(splits, tokenizer, max_length, chat_template)
        final = root / key
        cached = _load_cached_with_stats(final)
        if cached is not None:
            return cached
        encode = _chat_encoder(tokenizer) if chat_template else _plain_encoder(tokenizer)
        tokenized, stats = {}, {}
        for name, ds in splits.items():
            tokenized[name], stats[name] = _tokenize_split(ds, encode, max_length, f"{key}-{name}", name)
        save_atomically(datasets.DatasetDict(tokenized), final, {STATS_FILE: json.dumps(stats)})
        return datasets.load_from_disk(str(final)), stats


def end_token_id(tokenizer: Any) -> int:
    """The id that ends a response: ``eos_token_id``, else ``sep_token_id``."""
    for candidate in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise UserError(
        f"tokenizer {_name(tokenizer)!r} has no end-of-sequence token, so a response cannot be ended; "
        f"pick a model whose tokenizer defines eos_token"
    )


def padding_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: ``pad_token_id``, else the end token (padding is masked anyway)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else end_token_id(tokenizer)


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text on its own (BOS, or BERT's [CLS]), else ``[]``.

    Read from what ``tokenizer("x")`` does rather than from ``bos_token_id``:
    many tokenizers define a BOS token they never add.
    """
    with_special = list(tokenizer("x")["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


# ---------------------------------------------------------------- cache


def sft_cache_key(splits: datasets.DatasetDict, tokenizer: Any, max_length: int, chat_template: bool) -> str:
    """A short hex digest over everything the tokenized output depends on."""
    import transformers  # tokenizer Python code changes between releases

    parts = {
        "kind": "sft",
        "format": SFT_CACHE_FORMAT_VERSION,
        "max_length": max_length,
        # The template text itself: the tokenizer's hash does not cover it.
        "chat_template": tokenizer.chat_template if chat_template else None,
        "leading": leading_special_ids(tokenizer),
        "end": end_token_id(tokenizer),
        "splits": {name: content_hash(ds) for name, ds in sorted(splits.items())},
        "tokenizer": tokenizer_hash(tokenizer),
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _load_cached_with_stats(folder: Path) -> tuple[datasets.DatasetDict, dict] | None:
    """The cached splits and their stats, or None when either is absent or unreadable."""
    cached = load_cached(folder)
    if cached is None:
        return None
    try:
        stats = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # damaged from outside; tokenizing again replaces nothing (the rename loses)
    return cached, stats


# ---------------------------------------------------------------- checks


def _check_max_length(max_length: int) -> None:
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise UserError(
            f"{MAX_LENGTH_OPTION}={max_length!r} must be an integer >= 2 (a prompt token and a response token)"
        )


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"tokenizer {_name(tokenizer)!r} has no chat template; set {CHAT_TEMPLATE_OPTION}=false "
            f"to train on 'prompt + newline + response', or pick a model whose tokenizer has one"
        )


def _name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


# ---------------------------------------------------------------- encoders


def _plain_encoder(tokenizer: Any) -> Encoder:
    """Prompt ids (leading special tokens + ``prompt + "\\n"``) and response ids (+ EOS) of a batch."""
    leading, end = leading_special_ids(tokenizer), end_token_id(tokenizer)

    def encode(batch: dict[str, list]) -> tuple[list[list[int]], list[list[int]]]:
        prompts = _ids(tokenizer, [p + "\n" for p in batch["prompt"]])
        responses = _ids(tokenizer, batch["response"])
        return [leading + p for p in prompts], [r + [end] for r in responses]

    return encode


def _chat_encoder(tokenizer: Any) -> Encoder:
    """Prompt ids and response ids (+ EOS unless the template ends with it) rendered by the chat template."""
    end = end_token_id(tokenizer)

    def encode(batch: dict[str, list]) -> tuple[list[list[int]], list[list[int]]]:
        conversations = batch.get("messages") or [[{"role": "user", "content": p}] for p in batch["prompt"]]
        rendered = [_render(tokenizer, c, r) for c, r in zip(conversations, batch["response"])]
        prompts = _ids(tokenizer, [prompt for prompt, _ in rendered])
        responses = _ids(tokenizer, [rest for _, rest in rendered])
        return prompts, [r if r[-1:] == [end] else r + [end] for r in responses]

    return encode


def _render(tokenizer: Any, turns: list[dict[str, str]], response: str) -> tuple[str, str]:
    """``(prompt text, rest of the conversation)`` as the chat template writes them."""
    assistant = {"role": "assistant", "content": response}
    try:
        prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*turns, assistant], tokenize=False)
    except Exception as exc:  # jinja raises its own errors for conversations a template refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the chat template of tokenizer {_name(tokenizer)!r} cannot render a conversation ({first}); "
            f"fix the conversation or set {CHAT_TEMPLATE_OPTION}=false"
        ) from exc
    if not full.startswith(prompt):
        raise UserError(
            f"the chat template of tokenizer {_name(tokenizer)!r} writes the prompt differently once the answer "
            f"follows, so prompt tokens cannot be told from response tokens; set {CHAT_TEMPLATE_OPTION}=false"
        )
    return prompt, full[len(prompt) :]


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the caller places those)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# ---------------------------------------------------------------- one split


def _tokenize_split(
    ds: datasets.Dataset, encode: Encoder, max_length: int, fingerprint: str, name: str
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenize, fit to ``max_length``, count, and drop what does not fit."""

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        prompts, responses = encode(batch)
        rows = [fit_example(p, r, max_length) for p, r in zip(prompts, responses)]
        out = {column: [row[column] for row in rows] for column in _WORK_FEATURES if column != "answer"}
        return {**out, "answer": list(batch["answer"])}

    work = ds.map(
        encode_batch,
        batched=True,
        remove_columns=ds.column_names,
        features=_WORK_FEATURES,
        # In memory, since save_to_disk writes the only copy we keep; an explicit
        # fingerprint spares datasets from hashing (pickling) the tokenizer.
        keep_in_memory=True,
        new_fingerprint=fingerprint,
    )
    status = work["status"]
    stats = {
        "examples": sum(s != DROPPED for s in status),
        "truncated": sum(s == TRUNCATED for s in status),
        "dropped": sum(s == DROPPED for s in status),
    }
    if len(status) and stats["examples"] == 0:  # an empty validation or test split would score nothing
        raise UserError(
            f"every {name} example's prompt fills {MAX_LENGTH_OPTION}={max_length} tokens (the longest prompt has "
            f"{max(work['prompt_length'])}), leaving no room for a response; raise {MAX_LENGTH_OPTION} "
            f"or shorten the prompts"
        )
    if stats["dropped"]:
        work = work.filter(
            lambda statuses: [s != DROPPED for s in statuses], input_columns="status", batched=True, keep_in_memory=True
        )
    return work.select_columns(list(OUTPUT_COLUMNS)), stats


def fit_example(prompt_ids: list[int], response_ids: list[int], max_length: int) -> dict[str, Any]:
    """One example's columns (and its status) under ``max_length``.

    The response (with its EOS) is cut from the end to fit; the prompt is never
    cut, and an example whose prompt leaves no room for a response token is
    dropped (empty columns, status ``DROPPED``).
    """
    room = max_length - len(prompt_ids)
    if room < 1:
        ids, labels, status = [], [], DROPPED
    else:
        kept = response_ids[:room]
        ids = prompt_ids + kept
        labels = [IGNORE_INDEX] * len(prompt_ids) + kept
        status = TRUNCATED if len(kept) < len(response_ids) else KEPT
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "prompt_ids": prompt_ids if status != DROPPED else [],
        "status": status,
        "prompt_length": len(prompt_ids),
    }


# ---------------------------------------------------------------- batches


class SFTCollator:
    """Pad a list of tokenized SFT examples into a training batch, on the right.

    ``input_ids`` are padded with the tokenizer's pad token (else its end
    token), ``attention_mask`` with 0 and ``labels`` with -100, so padding is
    neither attended to nor learned. Columns other than these three
    (``prompt_ids``, ``answer``) are dropped. Returns int64 tensors of shape
    ``(batch, longest example)``. Generation pads prompts on the left instead
    (see the module docstring).
    """

    def __init__(self, tokenizer: Any):
        self.pad_id = padding_token_id(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for column, value in fill.items():
            rows = [_as_list(f[column]) for f in features]
            batch[column] = torch.tensor([row + [value] * (longest - len(row)) for row in rows], dtype=torch.long)
        return batch


def _as_list(values: Any) -> list[int]:
    """A row as a list of ints, whether the dataset is formatted as lists or tensors."""
    return values.tolist() if hasattr(values, "tolist") else list(values)

"""Tokenize text-classification splits once and reuse the result across runs.

``tokenize_splits`` turns ``text`` (and ``text_pair``) into ``input_ids``,
``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them) and
renames ``label`` to ``labels``. Sequences are truncated to ``max_length`` but
not padded: the collator pads each batch to its own longest sequence.

Results are cached with ``DatasetDict.save_to_disk`` in a folder named by a
key over everything the output depends on: the splits' content, the
tokenizer's full state, ``max_length`` and a format version. The folder is
written under a temporary name and renamed, so a concurrent run either sees a
complete cache or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets

from peftlab.data.loading import quiet_datasets
from peftlab.errors import UserError

# Bump when the cached layout or the tokenization call changes, so old caches
# are ignored instead of silently reused.
CACHE_FORMAT_VERSION = 1
_HASH_BATCH_ROWS = 10_000


def default_cache_root() -> Path:
    """``$PEFTLAB_CACHE_DIR/tokenized``, else ``~/.cache/peftlab/tokenized``."""
    base = os.environ.get("PEFTLAB_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "peftlab"
    return root / "tokenized"


def tokenize_splits(
    splits: datasets.DatasetDict,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | Path | None = None,
) -> datasets.DatasetDict:
    """Return ``splits`` tokenized (truncated, unpadded), from the cache when possible.

    ``cache_dir`` is the folder holding one subfolder per cache key; None means
    ``default_cache_root()``. The returned splits are memory-mapped from the
    cache folder either way, so a fresh and a cached call give the same object.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise UserError(f"max_length={max_length!r} must be a positive integer (e.g. 128)")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    with quiet_datasets():
        key = cache_key(splits, tokenizer, max_length)
        final = root / key
        cached = load_cached(final)
        if cached is not None:
            return cached
        tokenized = datasets.DatasetDict(
            {name: _tokenize_split(ds, tokenizer, max_length, f"{key}-{name}") for name, ds in splits.items()}
        )
        save_atomically(tokenized, final)
        return datasets.load_from_disk(str(final))


def label_names(splits: datasets.DatasetDict) -> list[str]:
    """The class names of the ``label`` (or tokenized ``labels``) ClassLabel column."""
    for ds in splits.values():
        for column in ("labels", "label"):
            feature = ds.features.get(column)
            if isinstance(feature, datasets.ClassLabel):
                return list(feature.names)
    raise ValueError("no split has a ClassLabel 'label' or 'labels' column")


# ---------------------------------------------------------------- cache key


def cache_key(splits: datasets.DatasetDict, tokenizer: Any, max_length: int) -> str:
    """A short hex digest over everything the tokenized output depends on."""
    import transformers  # the version matters: tokenizer Python code changes between releases

    parts = {
        "format": CACHE_FORMAT_VERSION,
        "max_length": max_length,
        "splits": {name: content_hash(ds) for name, ds in sorted(splits.items())},
        "tokenizer": tokenizer_hash(tokenizer),
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def content_hash(ds: datasets.Dataset) -> str:
    """Hash a split's features and rows.

    datasets' own fingerprint would be free, but in-memory datasets (the
    built-in set, anything made with ``from_dict``) get a random one per
    process, which would make every run miss the cache. Hashing the rows is
    deterministic and cheap next to tokenizing them.
    """
    digest = hashlib.sha256(json.dumps(ds.features.to_dict(), sort_keys=True).encode())
    for batch in ds.with_format(None).iter(batch_size=_HASH_BATCH_ROWS):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash the tokenizer's state: its full backend when it has one, else its vocabulary.

    The backend JSON holds normalizer, pre-tokenizer, vocabulary, added tokens
    and post-processor, so a different tokenizer saved under the same path
    still gets a different key. Its ``truncation``/``padding`` entries are
    dropped: transformers rewrites them on every call, so they would change
    the key between the first and second call of the same run.
    """
    state: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "special_tokens": getattr(tokenizer, "all_special_tokens", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "model_input_names": getattr(tokenizer, "model_input_names", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        config = json.loads(backend.to_str())
        config.pop("truncation", None)
        config.pop("padding", None)
        state["backend"] = config
    else:
        state["name_or_path"] = str(getattr(tokenizer, "name_or_path", ""))
        state["vocab"] = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else None
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- tokenizing and storing


def _tokenize_split(
    ds: datasets.Dataset, tokenizer: Any, max_length: int, fingerprint: str
) -> datasets.Dataset:
    """Tokenize one split; ``label`` becomes ``labels`` (what transformers models expect)."""
    has_pair = "text_pair" in ds.column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pair = batch["text_pair"] if has_pair else None
        return dict(tokenizer(batch["text"], pair, truncation=True, max_length=max_length))

    out = ds.map(
        encode,
        batched=True,
        remove_columns=[c for c in ds.column_names if c != "label"],
        # In memory, since save_to_disk writes the only copy we keep; an explicit
        # fingerprint spares datasets from hashing (pickling) the tokenizer.
        keep_in_memory=True,
        new_fingerprint=fingerprint,
    )
    if "label" in out.column_names:
        out = out.rename_column("label", "labels")
    order = [c for c in ("input_ids", "token_type_ids", "attention_mask", "labels") if c in out.column_names]
    return out.select_columns(order + [c for c in out.column_names if c not in order])


def load_cached(folder: Path) -> datasets.DatasetDict | None:
    """The cached splits, or None when absent or unreadable (then rebuilt)."""
    if not folder.is_dir():
        return None
    try:
        return datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError):
        # A folder only appears complete (atomic rename), so this is damage
        # from outside, e.g. a partial copy; drop it and tokenize again.
        shutil.rmtree(folder, ignore_errors=True)
        return None


def save_atomically(
    tokenized: datasets.DatasetDict, final: Path, extra_files: dict[str, str] | None = None
) -> None:
    """Write to a temporary sibling folder, then rename it to ``final``.

    ``extra_files`` (file name -> text) are written next to the splits before
    the rename, so they appear together with them. If another run renamed its
    copy first, ours is discarded: both hold the same content, since the key
    covers everything the content depends on.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        tokenized.save_to_disk(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

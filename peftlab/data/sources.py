"""Where a dataset's rows come from: a local data file, a folder of split files, or the Hugging Face hub.

``read_source`` maps the source's split names to readers that read a split only
when it is picked; every unreadable source is a ``UserError`` naming the file
(and, for JSON lines, the bad line) and what to change.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import pyarrow as pa

from peftlab.errors import UserError

# File extension -> datasets' packaged builder (these need no network).
BUILDERS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
SUPPORTED = ", ".join(sorted(BUILDERS))
# Suffixes that mark a path as a (missing) local file rather than a hub id.
_FILE_SUFFIXES = set(BUILDERS) | {".txt", ".gz", ".zip", ".arrow", ".xlsx", ".xls", ".xml"}

Reader = Callable[[], datasets.Dataset]
# Conventional split names per role, first the canonical one. A folder's files
# and a hub dataset's splits are matched against these.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
_SPLIT_FILE = re.compile(r"^(?P<name>[a-z]+)(?:[-_.].*)?$")


def read_source(
    path: str | Path, subset: str | None, revision: str | None, train_split: str
) -> tuple[dict[str, Reader], str]:
    """Map ``path``'s split names to readers, plus a short description for messages.

    Readers defer reading a local split until it is picked, so a split the user
    chose to carve instead (``dataset.test_split=null``) is never opened.
    """
    text = str(path)
    local = Path(text).expanduser()
    if local.is_file():
        # One file is all training data; its name is whatever train_split says.
        return {train_split or "train": functools.partial(_read_files, [local], text, "train")}, text
    if local.is_dir():
        return _read_folder(local, text), text
    if _looks_local(text):
        raise UserError(
            f"dataset.path={text!r} does not exist; pass an existing data file or folder "
            f"({SUPPORTED}) or a Hugging Face dataset id"
        )
    return _load_hub(text, subset, revision), repr(text)


def _looks_local(text: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything path-like is meant to be local."""
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or Path(text).suffix.lower() in _FILE_SUFFIXES
    )


def _extension(file: Path) -> str:
    return file.suffix.lower()


def _read_files(files: list[Path], shown: str, role: str) -> datasets.Dataset:
    """Read the data files of one split (one format) with datasets' packaged builders."""
    extensions = sorted({_extension(f) for f in files})
    unsupported = [e for e in extensions if e not in BUILDERS]
    if unsupported:
        raise UserError(
            f"dataset.path={shown!r} has unsupported extension {unsupported[0] or '(none)'!r}; "
            f"use one of {SUPPORTED}"
        )
    builders = {BUILDERS[e] for e in extensions}
    if len(builders) > 1:
        raise UserError(
            f"dataset.path={shown!r} mixes formats for one split ({', '.join(extensions)}); "
            f"keep one format per split"
        )
    if all(f.stat().st_size == 0 for f in files):
        # datasets' json builder fails obscurely on an empty file; say what it is.
        raise empty_split(role, role, shown)
    options = {"delimiter": "\t"} if extensions == [".tsv"] else {}
    try:
        return datasets.load_dataset(
            builders.pop(), data_files={"train": [str(f) for f in files]}, split="train", **options
        )
    except (
        datasets.exceptions.DatasetGenerationError,
        pa.ArrowException,
        ValueError,
        UnicodeError,
        StopIteration,
    ) as exc:
        if "corresponds to no data" in str(exc):
            # datasets cannot build a split with no rows (e.g. a CSV with only a header).
            raise empty_split(role, role, shown) from exc
        raise _unreadable(files, exc) from exc


def _unreadable(files: list[Path], exc: BaseException) -> UserError:
    """The error for a data file datasets cannot parse, naming the bad line of a JSON-lines file."""
    for file in files:
        bad = _first_bad_json_line(file) if _extension(file) == ".jsonl" else None
        if bad is not None:
            number, why = bad
            return UserError(
                f"{file} line {number} is not a JSON object ({why}); fix or remove that line "
                f"(a .jsonl file holds one JSON object per line)"
            )
    return UserError(f"could not read {files[0]}: {_root_cause(exc)}; check that the file is valid")


def _first_bad_json_line(file: Path) -> tuple[int, str] | None:
    """``(line number, reason)`` of the first non-blank line that is not a JSON object, or None."""
    try:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    return number, exc.msg
                if not isinstance(record, dict):
                    return number, f"a JSON {type(record).__name__}, not an object"
    except (OSError, UnicodeDecodeError):
        return None  # not text: the generic message says what datasets found
    return None


def _split_of(file: Path) -> str | None:
    """The role a folder's file plays from its name (``dev.jsonl`` -> validation)."""
    match = _SPLIT_FILE.match(file.name.lower())
    if match is None:
        return None
    for role, aliases in SPLIT_ALIASES.items():
        if match["name"] in aliases:
            return role
    return None


def _read_folder(folder: Path, shown: str) -> dict[str, Reader]:
    """Read ``train.*``/``validation.*``/``test.*`` files (also sharded, in subfolders)."""
    files = sorted(
        f
        for f in folder.rglob("*")
        if f.is_file()
        and _extension(f) in BUILDERS
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )
    if not files:
        raise UserError(
            f"dataset.path={shown!r} is a folder with no data files; add train.* files ({SUPPORTED})"
        )
    groups: dict[str, list[Path]] = {}
    for file in files:
        role = _split_of(file)
        if role is not None:
            groups.setdefault(role, []).append(file)
    if "train" not in groups:
        names = ", ".join(sorted({f.name for f in files})[:5])
        raise UserError(
            f"dataset.path={shown!r} has no train file (found {names}); name files train.*, "
            f"validation.* (or valid.*/dev.*) and test.*"
        )
    return {role: functools.partial(_read_files, group, shown, role) for role, group in groups.items()}


def _load_hub(name: str, subset: str | None, revision: str | None) -> dict[str, Reader]:
    """``datasets.load_dataset`` from the hub; any failure is the user's to fix."""
    what = (
        f"{name!r}"
        + (f" (subset {subset!r})" if subset else "")
        + (f" at revision {revision!r}" if revision else "")
    )
    try:
        loaded = datasets.load_dataset(name, subset, revision=revision)
    except ConnectionError as exc:
        raise UserError(
            f"dataset {what} could not be reached on the Hugging Face hub ({_first_line(exc)}); "
            f"check the id and connection, or pass a local file: dataset.path=path/to/data.jsonl"
        ) from exc
    except Exception as exc:  # a bad id, subset or revision surfaces as many exception types
        raise UserError(
            f"dataset {what} could not be loaded from the Hugging Face hub ({_first_line(exc)}); "
            f"check dataset.path/subset/revision, or pass a local file: dataset.path=path/to/data.jsonl"
        ) from exc
    return {split: (lambda ds=ds: ds) for split, ds in loaded.items()}  # already read


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's message: datasets wraps parse errors in a generic one."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    return _first_line(exc)


def empty_split(role: str, name: str, source: str) -> UserError:
    """The error for a split with no rows (train cannot be carved from anything)."""
    fix = (
        "add rows to it"
        if role == "train"
        else (f"add rows to it or set dataset.{role}_split=null to carve it out of train")
    )
    return UserError(f"split {name!r} of {source} is empty; {fix}")


def _first_line(exc: BaseException) -> str:
    """A one-line, bounded summary of an exception for a UserError message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

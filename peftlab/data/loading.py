"""Load any text-classification dataset into peftlab's one shape.

``load_text_classification`` accepts a local data file, a local folder of data
files, or a Hugging Face hub id, and always returns a ``DatasetDict`` with
splits ``train``, ``validation`` and ``test`` and columns ``text``, optional
``text_pair`` and ``label`` (a ``ClassLabel``). Splits the source lacks are
carved out of train. Every mistake a user can make here (a missing file, a
wrong column name, an empty split, unlabelled rows) is a ``UserError`` whose
one line names the bad value and the config key that fixes it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from peftlab.data.sources import SPLIT_ALIASES, Reader, empty_split, read_source
from peftlab.errors import UserError, did_you_mean

ROLES: tuple[str, ...] = ("train", "validation", "test")


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hide datasets' own progress bars and log lines for the duration, then restore them.

    peftlab shows its own progress; a dozen "Map: 100%" bars for a small
    dataset are noise. datasets also logs a parse failure before raising it,
    which would put a second line next to peftlab's one-line error.
    Restoring keeps the switch local to peftlab's calls.
    """
    was_enabled = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


def load_text_classification(
    path: str | Path,
    subset: str | None = None,
    revision: str | None = None,
    text_field: str = "text",
    text_pair_field: str | None = None,
    label_field: str = "label",
    train_split: str = "train",
    validation_split: str | None = "validation",
    test_split: str | None = "test",
    holdout_fraction: float = 0.1,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Return train/validation/test splits with ``text`` (``text_pair``) and ``label``.

    ``path`` is a .json/.jsonl/.csv/.tsv/.parquet file (all of it is train), a
    folder whose files are named ``train.*``, ``validation.*`` (or ``valid.*``,
    ``dev.*``) and ``test.*``, or a hub id loaded with
    ``datasets.load_dataset(path, subset, revision=revision)``. ``*_split`` name
    the source's splits; a missing validation or test split (or one set to
    None) is carved out of train: ``holdout_fraction`` of it, stratified by
    label when every class is large enough, shuffled with ``seed``.

    Integer labels keep their ids (names come from a ``ClassLabel`` feature,
    else ``str(id)``); string labels get ids in sorted order.
    """
    _check_fraction(holdout_fraction)
    requested = {"train": train_split, "validation": validation_split, "test": test_split}
    _check_distinct(requested)
    with quiet_datasets():
        raw, source = read_source(path, subset, revision, train_split)
        picked = {role: _pick_split(raw, role, name, source) for role, name in requested.items()}
        fields = {"text": ("text_field", text_field)}
        if text_pair_field is not None:
            fields["text_pair"] = ("text_pair_field", text_pair_field)
        fields["label"] = ("label_field", label_field)
        splits = {
            role: _select_columns(ds, fields, source, requested[role] or role)
            for role, ds in picked.items()
            if ds is not None
        }
        splits = _encode_labels(splits, source, label_field)
        splits = _carve_missing(splits, holdout_fraction, seed, source)
    return datasets.DatasetDict({role: splits[role] for role in ROLES})


# ---------------------------------------------------------------- shared with other loaders


def check_holdout_fraction(fraction: float) -> None:
    """A UserError naming ``dataset.holdout_fraction`` unless it is a number in (0, 0.5)."""
    _check_fraction(fraction)


def open_splits(
    path: str | Path, subset: str | None, revision: str | None, requested: dict[str, str | None]
) -> tuple[dict[str, datasets.Dataset], str]:
    """Read the source's split playing each role, as ``load_text_classification`` does.

    ``requested`` maps each of ``ROLES`` to the source's split name (None: carve
    it). Returns the splits found, by role (roles to carve are absent), and a
    short description of the source for messages. Call it inside
    ``quiet_datasets()``. Missing files, unknown or empty splits are UserErrors.
    """
    _check_distinct(requested)
    raw, source = read_source(path, subset, revision, requested["train"])
    picked = {role: _pick_split(raw, role, name, source) for role, name in requested.items()}
    return {role: ds for role, ds in picked.items() if ds is not None}, source


def carve_missing_splits(
    splits: dict[str, datasets.Dataset], fraction: float, seed: int, source: str
) -> datasets.DatasetDict:
    """Carve the roles ``splits`` lacks out of train (``fraction`` each, shuffled with ``seed``).

    Splits without a ``label`` column get a plain seeded split. Returns all of
    ``ROLES`` in order.
    """
    splits = _carve_missing(dict(splits), fraction, seed, source)
    return datasets.DatasetDict({role: splits[role] for role in ROLES})


# ---------------------------------------------------------------- argument checks


def _check_fraction(fraction: float) -> None:
    """Both holdouts come out of train, so each must stay well under half of it."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 0.5):
        raise UserError(
            f"dataset.holdout_fraction={fraction!r} must be a number between 0 and 0.5 (e.g. 0.1)"
        )


def _check_distinct(requested: dict[str, str | None]) -> None:
    """Two roles reading the same split would evaluate on training data."""
    seen: dict[str, str] = {}
    for role, name in requested.items():
        if name is None:
            continue
        if name in seen:
            raise UserError(
                f"dataset.{role}_split={name!r} is also dataset.{seen[name]}_split; "
                f"give each role its own split, or set dataset.{role}_split=null to carve it out of train"
            )
        seen[name] = role


# ---------------------------------------------------------------- reading sources


# ---------------------------------------------------------------- splits and columns


def _pick_split(raw: dict[str, Reader], role: str, name: str | None, source: str) -> datasets.Dataset | None:
    """The Dataset playing ``role``, or None when it should be carved out of train.

    A conventional name (``validation``) also finds its aliases (``dev``); a
    name the user chose must exist, since silently carving instead would hide
    a typo.
    """
    available = ", ".join(sorted(raw))
    if name is None:
        if role == "train":
            raise UserError(f"dataset.train_split must name a split of {source} (splits: {available})")
        return None
    if name in raw:
        found = raw[name]()
    elif name in SPLIT_ALIASES[role]:
        alias = next((a for a in SPLIT_ALIASES[role] if a in raw), None)
        found = raw[alias]() if alias is not None else None
        if found is None and role == "train":
            raise UserError(
                f"{source} has no {name!r} split (splits: {available}); set dataset.train_split=<split>"
            )
    else:
        raise UserError(
            f"dataset.{role}_split={name!r} is not a split of {source} (splits: {available})"
            f"{did_you_mean(name, raw)}; set dataset.{role}_split=<split>"
            + ("" if role == "train" else " or null to carve it out of train")
        )
    if found is not None and found.num_rows == 0:
        raise empty_split(role, name, source)
    return found


def _select_columns(
    ds: datasets.Dataset, fields: dict[str, tuple[str, str]], source: str, split: str
) -> datasets.Dataset:
    """Keep the configured columns, renamed to ``text``/``text_pair``/``label``."""
    columns = ds.column_names
    chosen: dict[str, str] = {}
    for target, (option, column) in fields.items():
        require_column(option, column, columns, f"{source} split {split!r}")
        if column in chosen.values():
            other = next(o for t, (o, c) in fields.items() if c == column and t in chosen)
            raise UserError(f"dataset.{option}={column!r} is also dataset.{other}; give each its own column")
        chosen[target] = column
    ds = ds.select_columns(list(chosen.values()))
    # rename_columns renames all at once, so a swap (text <-> label) is safe.
    ds = ds.rename_columns({c: t for t, c in chosen.items() if c != t})
    for target in ("text", "text_pair"):
        if target in chosen:
            _check_text_column(ds, target, fields[target], source, split)
    return ds


def require_column(option: str, column: str, columns: list[str], where: str) -> None:
    """A UserError naming ``dataset.<option>``, the columns there are and the closest one, unless present."""
    if column not in columns:
        raise UserError(
            f"dataset.{option}={column!r} is not a column of {where} "
            f"(columns: {', '.join(columns)}){did_you_mean(column, columns)}; set dataset.{option}=<column>"
        )


def _check_text_column(
    ds: datasets.Dataset, column: str, option_and_name: tuple[str, str], source: str, split: str
) -> None:
    """Text columns must hold strings, with no nulls (a tokenizer cannot take None)."""
    option, name = option_and_name
    feature = ds.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise UserError(
            f"dataset.{option}={name!r} holds {feature!r}, not text, in {source} split {split!r}; "
            f"set dataset.{option}=<column of strings>"
        )
    nulls = ds.data.column(column).null_count
    if nulls:
        raise UserError(
            f"dataset.{option}={name!r} has {nulls} null values in {source} split {split!r}; "
            f"drop or fill those rows"
        )


# ---------------------------------------------------------------- labels


def _encode_labels(
    splits: dict[str, datasets.Dataset], source: str, label_field: str
) -> dict[str, datasets.Dataset]:
    """Cast ``label`` to one ClassLabel shared by every split."""
    for role, ds in splits.items():
        _check_no_missing_labels(ds, role, source, label_field)
    feature = splits["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted({v for ds in splits.values() for v in ds.unique("label")})
    elif isinstance(feature, datasets.Value) and feature.dtype == "bool":
        names = ["False", "True"]
        splits = {r: ds.cast_column("label", datasets.Value("int64")) for r, ds in splits.items()}
    elif isinstance(feature, datasets.Value) and (feature.dtype.startswith(("int", "uint", "float"))):
        splits = {r: _integer_labels(ds, r, source, label_field) for r, ds in splits.items()}
        top = max(max(ds.unique("label")) for ds in splits.values())
        names = [str(i) for i in range(top + 1)]
    else:
        raise UserError(
            f"dataset.label_field={label_field!r} holds {feature!r} in {source}; peftlab needs one class per row "
            f"(integer ids or strings); set dataset.label_field=<column>"
        )
    label = datasets.ClassLabel(names=names)
    return {role: ds.cast_column("label", label) for role, ds in splits.items()}


def _check_no_missing_labels(ds: datasets.Dataset, role: str, source: str, label_field: str) -> None:
    """Nulls, NaNs and negative ids (datasets' -1 = "unlabelled") are all missing labels."""
    column = ds.data.column("label")
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += pc.sum(pc.is_nan(column)).as_py() or 0
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        missing += pc.sum(pc.less(column, 0)).as_py() or 0
    if missing:
        fix = (
            "drop or label those rows"
            if role == "train"
            else (f"drop or label those rows, or set dataset.{role}_split=null to carve {role} out of train")
        )
        raise UserError(
            f"dataset.label_field={label_field!r} has {missing} missing values (null, NaN or negative) "
            f"in {source} split {role!r}; {fix}"
        )


def _integer_labels(ds: datasets.Dataset, role: str, source: str, label_field: str) -> datasets.Dataset:
    """Integer ids pass; floats pass only when whole (CSV readers turn ints into floats)."""
    if ds.features["label"].dtype.startswith("float"):
        values = ds.unique("label")
        bad = next((v for v in values if not float(v).is_integer() or math.isinf(v)), None)
        if bad is not None:
            raise UserError(
                f"dataset.label_field={label_field!r} holds non-integer value {bad!r} in {source} split {role!r}; "
                f"peftlab does classification: use integer ids or strings"
            )
    return ds.cast_column("label", datasets.Value("int64"))


# ---------------------------------------------------------------- holdouts


def _carve_missing(
    splits: dict[str, datasets.Dataset], fraction: float, seed: int, source: str
) -> dict[str, datasets.Dataset]:
    """Carve the missing test, then validation, split out of train.

    When both are missing the second cut uses ``fraction / (1 - fraction)`` of
    what is left, so each holdout is ``fraction`` of the original train split.
    """
    missing = [role for role in ("test", "validation") if role not in splits]
    share = fraction
    for role in missing:
        splits["train"], splits[role] = _holdout(splits["train"], share, seed, source, role)
        share = fraction / (1 - fraction)
    return splits


def _holdout(
    train: datasets.Dataset, fraction: float, seed: int, source: str, role: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``fraction`` off ``train``: stratified by label when possible, else plain."""
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    except ValueError:
        # Stratifying needs at least two rows per class and one per class in the
        # holdout; small or skewed data gets a plain seeded split instead.
        try:
            parts = train.train_test_split(test_size=fraction, seed=seed)
        except ValueError as exc:
            raise UserError(
                f"split 'train' of {source} has {train.num_rows} rows, too few to carve a {role} split from; "
                f"add rows or provide a {role} split"
            ) from exc
    return parts["train"], parts["test"]

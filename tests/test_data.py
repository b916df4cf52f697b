"""Tests for peftlab.data: the built-in set, general loading, the tokenization cache."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from peftlab.data import generate_stdlib_docs as gen
from peftlab.data.builtin import DATA_FILE, LABEL_NAMES, load_stdlib_docs
from peftlab.data.loading import load_text_classification
from peftlab.data.tokenize import cache_key, label_names, tokenize_splits
from peftlab.errors import UserError

SPLITS = ("train", "validation", "test")

pytestmark = pytest.mark.usefixtures("datasets_cache_in_tmp")


@pytest.fixture(scope="module")
def builtin():
    return load_stdlib_docs()


# ---------------------------------------------------------------- built-in set


def test_builtin_has_seven_classes_and_about_1500_examples(builtin):
    assert list(builtin) == list(SPLITS)
    for split in SPLITS:
        ds = builtin[split]
        assert ds.column_names == ["text", "label"]
        assert ds.features["label"].names == list(LABEL_NAMES)
        assert ds.features["text"] == datasets.Value("string")
        assert set(ds["label"]) == set(range(7)), f"{split} lacks a class"
    total = sum(builtin[s].num_rows for s in SPLITS)
    assert 1400 <= total <= 1600
    assert LABEL_NAMES == ("text", "math", "files", "net", "data", "concurrency", "time")


def test_builtin_splits_are_about_70_15_15_and_classes_balanced(builtin):
    total = sum(builtin[s].num_rows for s in SPLITS)
    assert builtin["train"].num_rows / total == pytest.approx(0.70, abs=0.01)
    assert builtin["validation"].num_rows / total == pytest.approx(0.15, abs=0.01)
    counts = collections.Counter(label for s in SPLITS for label in builtin[s]["label"])
    assert max(counts.values()) <= gen.PER_CLASS_CAP
    assert min(counts.values()) >= gen.PER_CLASS_CAP / 2  # the smallest family is not starved


def test_builtin_splits_are_disjoint_with_no_empty_or_duplicate_text(builtin):
    texts = {s: builtin[s]["text"] for s in SPLITS}
    everything = [t for s in SPLITS for t in texts[s]]
    assert len(everything) == len(set(everything)), "a text appears twice"
    assert all(len(t) >= gen.MIN_CHARS and t == t.strip() and "\n" not in t for t in everything)
    assert all(len(t) <= gen.MAX_CHARS for t in everything)


def test_builtin_is_identical_on_reload_and_ignores_seed(builtin):
    again = load_stdlib_docs(seed=123)
    for split in SPLITS:
        assert again[split].to_dict() == builtin[split].to_dict()


def test_builtin_counts_match_the_documented_table(builtin):
    """The table in builtin.py's docstring is measured from the file; keep them in sync."""
    import peftlab.data.builtin as module

    for split in SPLITS:
        counts = collections.Counter(builtin[split]["label"])
        row = " ".join(str(counts[i]) for i in range(7))
        documented = next(line for line in module.__doc__.splitlines() if line.strip().startswith(split))
        assert " ".join(documented.split()[1:8]) == row


def test_data_file_records_are_well_formed_and_sorted():
    records = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines()]
    assert all(list(r) == ["text", "label", "module", "split"] for r in records)
    assert {r["label"] for r in records} == set(LABEL_NAMES)
    families = {module.replace(":", "."): family for family, mods in gen.FAMILIES.items() for module in mods}
    assert all(families[r["module"]] == r["label"] for r in records)
    key = [
        (gen.SPLITS.index(r["split"]), LABEL_NAMES.index(r["label"]), r["module"], r["text"]) for r in records
    ]
    assert key == sorted(key)


@pytest.mark.skipif(
    sys.version_info[:2] != gen.GENERATED_WITH, reason="docstrings differ between Python versions"
)
def test_generator_reproduces_the_frozen_file():
    # A fresh interpreter, so modules imported by other tests cannot change what is walked.
    code = "import sys; from peftlab.data import generate_stdlib_docs as g; sys.stdout.write(g.render(g.build_records()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, encoding="utf-8"
    ).stdout
    assert out == DATA_FILE.read_text(encoding="utf-8")


def test_split_assignment_is_deterministic_and_70_15_15():
    first = gen.assign_splits(200, seed=7)
    assert first == gen.assign_splits(200, seed=7)
    assert first != gen.assign_splits(200, seed=8)
    assert collections.Counter(first) == {"train": 140, "validation": 30, "test": 30}


def test_clean_docstring_drops_signature_whitespace_and_short_text():
    doc = "sleep(seconds) -> None\n\n    Delay execution for a given number\n    of seconds.  The argument may be\n    a float.\n\n    Second paragraph here.\n\n    Third paragraph is dropped."
    assert gen.clean_docstring(doc) == (
        "Delay execution for a given number of seconds. The argument may be a float. Second paragraph here."
    )
    assert gen.clean_docstring("Return self.") is None
    assert gen.clean_docstring(None) is None
    long = gen.clean_docstring("word " * 200)
    assert long is not None and len(long) <= gen.MAX_CHARS and not long.endswith(" ")


# ---------------------------------------------------------------- loading local files

ROWS = [
    {"sentence": f"example sentence number {i}", "category": ["pos", "neg", "neutral"][i % 3]}
    for i in range(60)
]


def _write(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the file extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))  # a JSON array, as people often save them
    elif path.suffix in (".csv", ".tsv"):
        datasets.Dataset.from_list(rows).to_csv(
            str(path), index=False, sep="\t" if path.suffix == ".tsv" else ","
        )
    elif path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("extension", [".json", ".jsonl", ".csv", ".tsv", ".parquet"])
def test_local_file_loads_with_column_mapping_and_string_labels(tmp_path, extension):
    path = _write(tmp_path / f"data{extension}", ROWS)
    splits = load_text_classification(str(path), text_field="sentence", label_field="category", seed=1)
    assert list(splits) == list(SPLITS)
    assert sum(splits[s].num_rows for s in SPLITS) == len(ROWS)
    assert splits["validation"].num_rows == splits["test"].num_rows == 6  # 10% of 60 each
    for split in SPLITS:
        assert splits[split].column_names == ["text", "label"]
        # String labels get ids in sorted order.
        assert splits[split].features["label"].names == ["neg", "neutral", "pos"]
    by_text = {r["sentence"]: r["category"] for r in ROWS}
    names = splits["train"].features["label"].names
    for row in splits["test"]:
        assert names[row["label"]] == by_text[row["text"]]
    texts = [set(splits[s]["text"]) for s in SPLITS]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_carving_is_seeded_and_stratified(tmp_path):
    path = _write(tmp_path / "data.jsonl", ROWS)
    a = load_text_classification(path, text_field="sentence", label_field="category", seed=3)
    b = load_text_classification(path, text_field="sentence", label_field="category", seed=3)
    c = load_text_classification(path, text_field="sentence", label_field="category", seed=4)
    assert a["test"]["text"] == b["test"]["text"]
    assert a["test"]["text"] != c["test"]["text"]
    assert collections.Counter(a["test"]["label"]) == {0: 2, 1: 2, 2: 2}


def test_integer_labels_keep_their_ids(tmp_path):
    rows = [{"text": f"row {i}", "label": [2, 0, 5][i % 3]} for i in range(30)]
    splits = load_text_classification(_write(tmp_path / "ints.csv", rows))
    assert splits["train"].features["label"].names == ["0", "1", "2", "3", "4", "5"]
    by_text = {r["text"]: r["label"] for r in rows}
    assert all(by_text[r["text"]] == r["label"] for s in SPLITS for r in splits[s])


def test_classlabel_names_are_kept(tmp_path):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])}
    )
    ds = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=features
    )
    ds.to_parquet(str(tmp_path / "train.parquet"))
    splits = load_text_classification(tmp_path)
    assert splits["train"].features["label"].names == ["no", "yes"]


def test_folder_with_train_and_test_gets_a_carved_validation_split(tmp_path):
    _write(tmp_path / "data" / "train.jsonl", ROWS[:40])
    _write(tmp_path / "data" / "test.jsonl", ROWS[40:])
    splits = load_text_classification(tmp_path / "data", text_field="sentence", label_field="category")
    assert splits["test"]["text"] == [r["sentence"] for r in ROWS[40:]]
    assert splits["validation"].num_rows == 4
    assert splits["train"].num_rows == 36
    assert not set(splits["validation"]["text"]) & set(splits["train"]["text"])


def test_folder_understands_dev_files_and_text_pairs(tmp_path):
    rows = [{"premise": f"p {i}", "hypothesis": f"h {i}", "label": i % 2} for i in range(20)]
    _write(tmp_path / "train.csv", rows)
    _write(tmp_path / "dev.csv", rows[:4])
    _write(tmp_path / "test.csv", rows[4:8])
    splits = load_text_classification(tmp_path, text_field="premise", text_pair_field="hypothesis")
    assert splits["validation"].num_rows == 4 and splits["train"].num_rows == 20
    assert splits["train"].column_names == ["text", "text_pair", "label"]
    assert splits["validation"][0] == {"text": "p 0", "text_pair": "h 0", "label": 0}


# ---------------------------------------------------------------- user mistakes


def _user_error(match: str, *args, **kwargs) -> str:
    """Run the loader, expect a UserError mentioning ``match``, return its message."""
    with pytest.raises(UserError) as info:
        load_text_classification(*args, **kwargs)
    message = str(info.value)
    assert match in message and "\n" not in message
    return message


def test_missing_local_path(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    assert "does not exist" in _user_error(missing, missing)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    message = _user_error("'.txt'", str(path))
    assert ".jsonl" in message


@pytest.mark.parametrize("bad_line, why", [('{"sentence": "b", "category": ', "Expecting value"),
                                           ('["b", "food"]', "a JSON list, not an object")])
def test_broken_jsonl_line_is_named_without_library_log_lines(tmp_path, capfd, bad_line, why):
    lines = [json.dumps(r) for r in ROWS]
    lines.insert(3, bad_line)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = _user_error(f"{path} line 4 is not a JSON object", path, text_field="sentence", label_field="category")
    assert why in message
    # datasets logs its own parse error before raising; that second line must not reach the terminal.
    assert "Failed to load JSON" not in capfd.readouterr().err


def test_datasets_log_level_is_restored_after_loading(tmp_path):
    before = datasets.logging.get_verbosity()
    load_text_classification(_write(tmp_path / "d.jsonl", ROWS), text_field="sentence", label_field="category")
    assert datasets.logging.get_verbosity() == before


def test_require_column_names_the_columns_and_the_closest():
    from peftlab.data.loading import require_column

    require_column("text_field", "text", ["text", "label"], "the built-in dataset")
    with pytest.raises(UserError) as info:
        require_column("label_field", "labl", ["text", "label"], "the built-in dataset")
    message = str(info.value)
    assert "dataset.label_field='labl'" in message and "columns: text, label" in message
    assert "did you mean 'label'" in message and "the built-in dataset" in message


def test_missing_text_column_lists_columns_and_the_fix(tmp_path):
    path = _write(tmp_path / "data.jsonl", ROWS)
    message = _user_error("'text'", path, label_field="category")
    assert "sentence, category" in message and "set dataset.text_field=" in message


def test_missing_label_column_suggests_the_close_name(tmp_path):
    path = _write(tmp_path / "data.jsonl", ROWS)
    message = _user_error("'categroy'", path, text_field="sentence", label_field="categroy")
    assert "did you mean 'category'" in message and "set dataset.label_field=" in message


def test_empty_split(tmp_path):
    _write(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "test.jsonl").write_text("")
    _user_error("'test'", tmp_path, text_field="sentence", label_field="category")
    # The message's fix works: carving test instead of reading the empty file.
    splits = load_text_classification(
        tmp_path, text_field="sentence", label_field="category", test_split=None
    )
    assert splits["test"].num_rows == 6


def test_empty_csv_split_with_only_a_header(tmp_path):
    _write(tmp_path / "train.csv", ROWS)
    (tmp_path / "validation.csv").write_text("sentence,category\n")
    _user_error("'validation'", tmp_path, text_field="sentence", label_field="category")


@pytest.mark.parametrize("missing", [None, -1])
def test_label_column_with_missing_values(tmp_path, missing):
    rows = [{"text": f"row {i}", "label": missing if i == 3 else i % 2} for i in range(10)]
    message = _user_error("'label'", _write(tmp_path / "data.jsonl", rows))
    assert "1 missing" in message


def test_unknown_split_name(tmp_path):
    _write(tmp_path / "train.jsonl", ROWS)
    _user_error("'heldout'", tmp_path, text_field="sentence", label_field="category", test_split="heldout")


@pytest.mark.parametrize("fraction", [0, 0.5, 2])
def test_bad_holdout_fraction(tmp_path, fraction):
    _user_error(f"holdout_fraction={fraction}", _write(tmp_path / "d.jsonl", ROWS), holdout_fraction=fraction)


def test_hub_id_offline_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    # Offline mode fails at once instead of retrying the network for seconds.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = _user_error("'someone/some-dataset'", "someone/some-dataset")
    assert "could not be reached" in message and "local file" in message


# ---------------------------------------------------------------- tokenization


class CountingTokenizer:
    """Delegates to a real tokenizer and counts calls, to prove cache hits skip it."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)


def test_tokenize_truncates_without_padding_and_renames_labels(builtin, tokenizer, tmp_path):
    out = tokenize_splits(builtin, tokenizer, max_length=32, cache_dir=tmp_path)
    assert list(out) == list(SPLITS)
    train = out["train"]
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    lengths = [len(ids) for ids in train["input_ids"]]
    assert max(lengths) == 32 and min(lengths) < 32  # truncated, not padded
    assert all(ids[0] == tokenizer.cls_token_id for ids in train["input_ids"])
    assert train["labels"] == builtin["train"]["label"]
    assert label_names(out) == label_names(builtin) == list(LABEL_NAMES)


def test_tokenize_cache_is_reused_without_calling_the_tokenizer(builtin, tokenizer, tmp_path):
    counting = CountingTokenizer(tokenizer)
    first = tokenize_splits(builtin, counting, max_length=48, cache_dir=tmp_path)
    assert counting.calls > 0
    folders = [p for p in tmp_path.iterdir()]
    assert [p.name for p in folders] == [cache_key(builtin, counting, 48)]  # no temporary folders left
    assert (folders[0] / "dataset_dict.json").is_file()

    counting.calls = 0
    second = tokenize_splits(builtin, counting, max_length=48, cache_dir=tmp_path)
    assert counting.calls == 0
    assert second["test"].to_dict() == first["test"].to_dict()


def test_cache_key_changes_with_max_length_and_content(builtin, tokenizer, tmp_path):
    base = cache_key(builtin, tokenizer, 64)
    assert cache_key(builtin, tokenizer, 64) == base  # stable, even after the tokenizer was used
    assert cache_key(builtin, tokenizer, 65) != base
    changed = datasets.DatasetDict(dict(builtin, test=builtin["test"].select(range(10))))
    assert cache_key(changed, tokenizer, 64) != base
    tokenize_splits(builtin, tokenizer, 64, cache_dir=tmp_path)
    tokenize_splits(builtin, tokenizer, 65, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_tokenize_text_pairs(tmp_path, tokenizer):
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "text_pair": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["a", "b"]),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"text": ["first part"], "text_pair": ["second part"], "label": [1]}, features=features
    )
    out = tokenize_splits(datasets.DatasetDict(train=ds), tokenizer, 16, cache_dir=tmp_path)["train"][0]
    assert out["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(out["token_type_ids"]) == {0, 1} and out["labels"] == 1


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from peftlab.data.tokenize import default_cache_root

    monkeypatch.setenv("PEFTLAB_CACHE_DIR", str(tmp_path))
    assert default_cache_root() == tmp_path / "tokenized"

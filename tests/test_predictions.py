"""A classifier's evaluation outputs: predictions per split, per-class metrics and the confusion
matrix (summary, show, HTML report), and evaluation of a run on another dataset."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.conftest import peftlab


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    res = peftlab("train", "model=tiny", "trainer.max_steps=6", "trainer.eval_every=3", "optimizer.lr=5e-3",
                  f"runs_dir={root}", "-q")
    assert res.returncode == 0, res.stderr
    return next(root.glob("*/v1"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_evaluated_split_leaves_one_prediction_per_example(trained):
    files = sorted(p.name for p in (trained / "predictions").iterdir())
    assert files == ["test-step_0000006.jsonl", "validation-step_0000003.jsonl", "validation-step_0000006.jsonl"]
    summary = json.loads((trained / "summary.json").read_text())
    rows = _lines(trained / "predictions" / "test-step_0000006.jsonl")
    assert len(rows) == summary["test"]["examples"] and [r["index"] for r in rows] == list(range(len(rows)))
    labels = summary["test_details"]["labels"]
    for r in rows:
        assert set(r) == {"index", "text", "label", "prediction", "scores"} and r["text"]
        assert list(r["scores"]) == labels and sum(r["scores"].values()) == pytest.approx(1, abs=1e-4)
        best = max(r["scores"].values())
        assert r["scores"][r["prediction"]] == best  # the prediction is the most probable class
    accuracy = sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(summary["test"]["accuracy"])


def test_rows_are_in_the_splits_order_though_evaluation_batches_by_length(trained):
    from peftlab.data.builtin import load_stdlib_docs

    test = load_stdlib_docs()["test"]
    names = test.features["label"].names
    rows = _lines(trained / "predictions" / "test-step_0000006.jsonl")
    lengths = [len(r["text"]) for r in rows]
    assert lengths != sorted(lengths)  # the split is not already in length order, so the test can fail
    assert [r["label"] for r in rows] == [names[y] for y in test["label"]]
    for row, text in zip(rows, test["text"]):
        assert "".join(text.lower().split()).startswith("".join(row["text"].lower().split())[:40])


def test_the_summary_holds_the_confusion_matrix_and_per_class_metrics_of_the_reported_test(trained):
    summary = json.loads((trained / "summary.json").read_text())
    details = summary["test_details"]
    rows = _lines(trained / "predictions" / f"test-step_{summary['selected_step']:07d}.jsonl")
    labels = details["labels"]
    expected = [[sum(r["label"] == t and r["prediction"] == p for r in rows) for p in labels] for t in labels]
    assert details["confusion"] == expected
    for i, name in enumerate(labels):  # precision, recall, F1 recomputed from the predictions
        tp = expected[i][i]
        predicted, actual = sum(row[i] for row in expected), sum(expected[i])
        precision, recall = (tp / predicted if predicted else 0.0), (tp / actual if actual else 0.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        got = details["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((precision, recall, f1, actual))


def test_show_and_the_html_report_print_them(trained, tmp_path):
    shown = peftlab("show", str(trained), env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "test per class" in text
    details = json.loads((trained / "summary.json").read_text())["test_details"]
    for i, label in enumerate(details["labels"]):  # each class's row ends with its row of the confusion matrix
        line = next(x for x in text.splitlines() if x.lstrip().startswith(f"{i} {label} "))
        assert [int(v) for v in re.findall(r"\d+", line)[-len(details["labels"]):]] == details["confusion"][i]
    report = tmp_path / "r.html"
    res = peftlab("compare", str(trained), "--html", str(report))
    assert res.returncode == 0, res.stderr
    html = report.read_text()
    assert "test per class" in html and f"<td>{details['confusion'][0][0]}</td>" in html


def _relabelled_copy(tmp_path: Path) -> Path:
    """The built-in dataset's examples as local files whose classes come in another order."""
    from peftlab.config import build, compose

    raw = build(compose(["dataset=stdlib_docs"]).dataset, seed=0)
    names = raw["train"].features["label"].names
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        rows = [{"text": r["text"], "label": names[r["label"]]} for r in raw[split]]
        order = list(range(len(rows)))
        random.Random(1).shuffle(order)  # another first-seen order of the classes, the same examples per split
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    return folder


def test_a_run_evaluates_on_another_dataset_with_its_classes_mapped_by_name(trained, tmp_path):
    own = peftlab("eval", str(trained), "--json")
    folder = _relabelled_copy(tmp_path)
    other = peftlab("eval", str(trained), "dataset=hf", f"dataset.path={folder}", "--json")
    assert own.returncode == 0 and other.returncode == 0, other.stderr
    a, b = json.loads(own.stdout), json.loads(other.stdout)
    assert b["examples"] == a["examples"]
    assert b["accuracy"] == pytest.approx(a["accuracy"]) and b["loss"] == pytest.approx(a["loss"], rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["dataset=arith_kinds"], "has classes this run never learned"),
    (["method=pissa"], "takes only dataset=... and dataset.* overrides"),
    (["dataset.holdout_fraction=0.2"], "name the dataset to evaluate on"),
])
def test_bad_datasets_for_eval_are_one_line_errors(trained, args, message):
    res = peftlab("eval", str(trained), *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr

"""`peftlab compare` chooses on validation and says what to keep in mind (fabricated runs, no torch).

Rows are ranked and marked by the validation metric of each run's selected
checkpoint; test is only reported. Notes name runs that cannot be ranked, runs
made before checkpoint selection, different datasets and single seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab import compare as cmp

CLI = Path(sys.executable).parent / "peftlab"
STDLIB = {"_target_": "peftlab.data.builtin.load_stdlib_docs", "text_field": "text", "label_field": "label"}


pytestmark = pytest.mark.usefixtures("hermetic")


def summary(val=None, test=None, *, selection="best", best=None, final=None) -> dict:
    """A summary.json; ``selection=None`` writes one made before checkpoint selection."""
    out: dict = {"metric": "accuracy", "test": {} if test is None else {"accuracy": test}}
    if selection is not None:
        out.update(selection=selection, selected_step=10)
    best = val if best is None else best
    final = val if final is None else final
    out["best_validation"] = {"step": 10} if best is None else {"step": 10, "accuracy": best}
    out["final_validation"] = {} if final is None else {"accuracy": final}
    return out


def write_run(root: Path, rank: int, seed: int, summ: dict | None, *, dataset: dict | None = None,
              name: str | None = None) -> Path:
    """A completed run folder of ``method.rank=rank seed=seed``, written file by file."""
    dataset = dataset or STDLIB
    d = root / (name or f"lora-r{rank}") / f"v{seed + 1}"
    d.mkdir(parents=True)
    config = {"dataset": dataset, "method": {"_target_": "peftlab.methods.lora.LoRA", "rank": rank},
              "trainer": {"metric": "accuracy"}, "seed": seed}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "overrides.txt").write_text(f"method.rank={rank}\nseed={seed}\n")
    choice = "hf" if "path" in dataset else "stdlib_docs"
    (d / "meta.json").write_text(json.dumps({"status": "completed", "seed": seed,
                                             "choices": {"method": "lora", "dataset": choice}}))
    if summ is not None:
        (d / "summary.json").write_text(json.dumps(summ))
    return d


def rows_of(root: Path, **kw) -> dict[str, cmp.Row]:
    rows = cmp.group(cmp.collect([str(root)]), **kw)
    return {r.params.get("method.rank", r.label): r for r in rows}


def cli(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, check=False)


# ---------------------------------------------------------------- ranking ---
def test_best_is_chosen_by_validation_not_test(tmp_path):
    write_run(tmp_path / "runs", 2, 0, summary(val=0.9, test=0.5))
    write_run(tmp_path / "runs", 4, 0, summary(val=0.6, test=0.8))
    rows = rows_of(tmp_path / "runs")
    assert rows["2"].best and not rows["4"].best and not rows["4"].within_noise
    assert rows["2"].val_mean == pytest.approx(0.9) and rows["2"].test_mean == pytest.approx(0.5)


def test_selection_picks_the_validation_of_the_kept_checkpoint(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(selection="best", best=0.9, final=0.5, test=0.6))
    write_run(root, 4, 0, summary(selection="final", best=0.95, final=0.7, test=0.9))
    rows = rows_of(root)
    assert rows["2"].val_mean == pytest.approx(0.9)  # its best checkpoint
    assert rows["4"].val_mean == pytest.approx(0.7)  # its final checkpoint, not its best evaluation
    assert rows["2"].best
    notes = cmp.row_notes(list(rows.values()))
    assert any("different checkpoints (best: 1, final: 1)" in n for n in notes)


def test_a_run_that_could_not_keep_its_best_checkpoint_is_noted(tmp_path):
    root = tmp_path / "runs"
    s = summary(selection="final", best=0.9, final=0.7, test=0.6)
    s["selection_note"] = "the best-validation weights (step 10) were not found"
    write_run(root, 2, 0, s)
    (row,) = cmp.group(cmp.collect([str(root)]))
    assert row.val_mean == pytest.approx(0.7)
    assert ("1 run(s) kept the final step instead of the best (the best-validation weights (step 10) were not "
            "found): lora-r2/v1") in cmp.row_notes([row])


def test_runs_made_before_selection_rank_by_final_validation(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(selection=None, best=0.95, final=0.6, test=0.9))
    write_run(root, 4, 0, summary(selection=None, best=0.7, final=0.7, test=0.6))
    rows = rows_of(root)
    assert rows["4"].best and rows["2"].val_mean == pytest.approx(0.6)
    notes = cmp.row_notes(list(rows.values()))
    assert "test at the final step for 2 run(s) made before checkpoint selection" in notes[0]


def test_run_without_validation_is_shown_but_not_marked(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=None, test=0.99))
    write_run(root, 4, 0, summary(val=0.6, test=0.5))
    rows = rows_of(root)
    assert set(rows) == {"2", "4"}
    assert rows["4"].best and not rows["2"].best and not rows["2"].within_noise and rows["2"].mark == ""
    notes = cmp.row_notes(list(rows.values()))
    assert any("1 run(s) cannot be ranked (summary.json has no best_validation accuracy): lora-r2/v1" in n
               for n in notes)


def test_within_noise_is_judged_on_validation(tmp_path):
    root = tmp_path / "runs"
    for seed, (val, test) in enumerate([(0.89, 0.80), (0.91, 0.80)]):
        write_run(root, 2, seed, summary(val=val, test=test))
    for seed, (val, test) in enumerate([(0.88, 0.50), (0.90, 0.50)]):
        write_run(root, 4, seed, summary(val=val, test=test))
    rows = rows_of(root)
    assert rows["2"].best
    assert rows["4"].within_noise  # validation bands overlap (test ones do not)


def test_sort_metric_is_validation_and_test_only_reorders(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=0.9, test=0.5))
    write_run(root, 4, 0, summary(val=0.6, test=0.8))
    write_run(root, 8, 0, summary(val=0.7, test=0.7))
    recs = cmp.collect([str(root)])
    by_metric = cmp.group(recs, sort="metric")
    assert [r.params["method.rank"] for r in by_metric] == ["2", "8", "4"] and by_metric[0].best
    by_test = cmp.group(recs, sort="test")
    assert [r.params["method.rank"] for r in by_test] == ["4", "8", "2"]
    assert [r.best for r in by_test] == [False, False, True]  # marks stay with validation


def test_lower_is_better_validation_metric(tmp_path):
    root = tmp_path / "runs"
    for rank, val, test in ((2, 0.3, 0.9), (4, 0.5, 0.1)):
        s = summary(val=0.5, test=0.5)
        s["best_validation"]["loss"] = s["final_validation"]["loss"] = val
        s["test"]["loss"] = test
        write_run(root, rank, 0, s)
    rows = rows_of(root, metric="loss")
    assert rows["2"].best and not rows["2"].higher_is_better


# ---------------------------------------------------------- texts and json ---
def test_caption_and_help_say_ranked_by_validation(tmp_path):
    write_run(tmp_path / "runs", 2, 0, summary(val=0.9, test=0.5))
    rows = cmp.group(cmp.collect([str(tmp_path / "runs")]))
    cap = cmp.caption(rows)
    assert "Ranked and marked by validation accuracy" in cap
    assert "test accuracy reported at the selected checkpoint" in cap
    assert [c.header for c in cmp.formats.columns(rows)][1:3] == ["val accuracy", "test accuracy"]
    help_text = cli("compare", "--help").stdout
    assert "validation" in help_text and "reporting order only" in help_text


def test_json_output_marks_by_validation_and_carries_notes(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=0.9, test=0.5))
    write_run(root, 4, 0, summary(val=0.6, test=0.8))
    res = cli("compare", str(root), "--format", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [(r["method.rank"], r["best"]) for r in data["rows"]] == [("2", True), ("4", False)]
    assert any("n = 1 (a single seed)" in n for n in data["notes"])
    assert "n = 1 (a single seed)" in res.stderr  # printed too, away from the JSON on stdout


# ------------------------------------------------------------------ notes ---
def test_dataset_note_names_the_datasets(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=0.9, test=0.5))
    write_run(root, 4, 0, summary(val=0.6, test=0.8), dataset={"_target_": "load", "path": "reviews.csv",
                                                                "text_field": "review"})
    note = cmp.notes.dataset_note(cmp.collect([str(root)]))
    assert note and "different datasets" in note
    assert "stdlib_docs (1 run(s))" in note and "hf path=reviews.csv (1 run(s))" in note


def test_dataset_note_tells_apart_same_path_other_fields(tmp_path):
    root = tmp_path / "runs"
    for rank, field in ((2, "review"), (4, "title")):
        write_run(root, rank, 0, summary(val=0.5, test=0.5),
                  dataset={"_target_": "load", "path": "reviews.csv", "text_field": field})
    note = cmp.notes.dataset_note(cmp.collect([str(root)]))
    assert note and "text_field=review" in note and "text_field=title" in note


def test_no_dataset_note_for_one_dataset(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=0.9, test=0.5))
    write_run(root, 4, 0, summary(val=0.6, test=0.8))
    assert cmp.notes.dataset_note(cmp.collect([str(root)])) is None


def test_single_seed_note_only_for_rows_with_one_seed(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=0.9, test=0.5))
    write_run(root, 4, 0, summary(val=0.6, test=0.8))
    write_run(root, 4, 1, summary(val=0.62, test=0.8))
    rows = cmp.group(cmp.collect([str(root)]))
    note = cmp.notes.single_seed_note(rows)
    assert note == ("1 of 2 configurations have n = 1 (a single seed): differences may be seed noise; "
                    "run more seeds, e.g. seed=0,1,2")
    write_run(root, 2, 1, summary(val=0.9, test=0.5))
    assert cmp.notes.single_seed_note(cmp.group(cmp.collect([str(root)]))) is None


def test_notes_reach_the_table_and_the_html_report(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 2, 0, summary(val=0.9, test=0.5))
    write_run(root, 4, 0, summary(val=0.6, test=0.8), dataset={"_target_": "load", "path": "other.csv"})
    res = cli("compare", str(root), "--html", str(tmp_path / "r.html"))
    assert res.returncode == 0, res.stderr
    assert "different datasets" in res.stdout and "n = 1 (a single seed)" in res.stdout
    page = (tmp_path / "r.html").read_text()
    assert "different datasets" in page and "hf path=other.csv" in page
    assert "Ranked and marked by validation accuracy" in page

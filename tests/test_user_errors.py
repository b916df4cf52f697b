"""Every user mistake: one line naming the bad value and the fix, exit code 2, no traceback,
and no run marked completed."""

from __future__ import annotations

import pytest

from peftlab import runs
from tests.conftest import peftlab


@pytest.fixture
def bad_csv(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars\nlovely,good\nawful,bad\nfine,good\nmeh,bad\n" * 5)
    return path


CASES = {
    "unknown method": (["method=lorra"], ["lorra", "did you mean 'lora'"]),
    "rank zero": (["method.rank=0"], ["method.rank=0", ">= 1"]),
    "rank larger than the layer": (["model=tiny", "method.rank=65"], ["method.rank=65", "<= 64"]),
    "targets match nothing": (["model=tiny", "method.target_modules=[nothing_here]"], ["nothing_here", "matches no Linear"]),
    "unknown override key": (["trainer.max_stepz=3"], ["trainer.max_stepz", "did you mean 'trainer.max_steps'"]),
    "unknown root key": (["sed=3"], ["'sed'", "did you mean 'seed'"]),
    "model path missing": (["model=hf", "model.name=./no/such/model"], ["./no/such/model", "does not exist"]),
    "model name missing": (["model=hf"], ["model.name", "must be set"]),
    "bad type": (["trainer.max_steps=many"], ["trainer.max_steps", "many"]),
    "bad schedule": (["trainer.schedule=wavy"], ["trainer.schedule=wavy", "cosine"]),
    "malformed override": (["method.rank=="], ["method.rank=="]),
    "fp16 without a GPU": (["model=tiny", "trainer.precision=fp16", "trainer.cpu=true"], ["trainer.precision=fp16"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_mistake_is_one_line_and_exit_2(case, runs_dir):
    args, needles = CASES[case]
    result = peftlab("train", *args, "trainer.max_steps=2" if "trainer.max_steps" not in " ".join(args) else "-q")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    # Mistakes are caught before a run folder is made, so nothing is left behind at all.
    assert not runs_dir.exists() or not runs.list_runs(runs_dir)


def test_missing_dataset_column_names_the_columns(runs_dir, bad_csv):
    result = peftlab("train", "model=tiny", "dataset=hf", f"dataset.path={bad_csv}", "dataset.text_field=text",
                     "dataset.label_field=stars", "trainer.max_steps=2")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "text" in line and "review" in line
    assert not runs_dir.exists() or not runs.list_runs(runs_dir)


def test_local_csv_with_column_mapping_trains(runs_dir, bad_csv):
    result = peftlab("train", "model=tiny", "dataset=hf", f"dataset.path={bad_csv}", "dataset.text_field=review",
                     "dataset.label_field=stars", "trainer.max_steps=3", "trainer.batch_size=4", "-q")
    assert result.returncode == 0, result.stderr
    assert runs.list_runs(runs_dir)[0].status == "completed"


def test_show_unknown_run_is_one_line(runs_dir):
    result = peftlab("show", "nope")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1

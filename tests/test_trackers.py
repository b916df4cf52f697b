"""Trackers: every metric line goes to TensorBoard inside the run folder, read back with TensorBoard's reader."""

from __future__ import annotations

import json

import pytest

from tests.conftest import peftlab

pytest.importorskip("tensorboard")


def test_tensorboard_gets_every_metric_line_and_the_run_folder(runs_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = peftlab("train", "model=tiny", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=1",
                  "trainer.log_with=[tensorboard]", "-q")
    assert res.returncode == 0, res.stderr
    run = next(runs_dir.glob("*/v1"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (folder,) = [p for p in (run / "trackers").iterdir() if p.is_dir()]
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = events.Tags()["scalars"]
    for line in lines:  # each number of each line, at its step
        for key, value in line.items():
            if key in ("step", "split") or not isinstance(value, (int, float)):
                continue
            tag = f"{line['split']}/{key}"
            assert tag in tags, tag
            logged = {e.step: e.value for e in events.Scalars(tag)}
            assert logged[line["step"]] == pytest.approx(value, rel=1e-6)
    hparams = next(run.glob("trackers/*/*/hparams.yml")).read_text()
    assert str(run.resolve()) in hparams and "method._target_" in hparams


def test_an_unknown_tracker_is_refused_before_a_run_exists(runs_dir):
    res = peftlab("train", "model=tiny", "trainer.log_with=[tensorbord]")
    assert res.returncode == 2 and "did you mean 'tensorboard'" in res.stderr and "Traceback" not in res.stderr
    assert not runs_dir.exists() or not list(runs_dir.glob("*/v*"))

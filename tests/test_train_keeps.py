"""What training keeps and refuses across failures: the best weights when a run is killed or fails while it
completes, a key metric validation cannot measure, a diverging causal LM, a resume that would change the run."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

from peftlab import checkpoints, runs
from peftlab.errors import UserError
from tests.conftest import peftlab
from tests.test_train_faults import TINY, _interrupted_after, adapter_tensors, run_in_process

BEST = ["trainer.max_steps=6", "trainer.eval_every=2", "trainer.checkpoint_every=2", "optimizer.lr=1.0", "trainer.metric=loss"]


def test_a_failure_while_completing_keeps_the_best_weights_for_the_resume(runs_dir, monkeypatch):
    """adapter/ is saved, then the summary fails (a full disk): best/ must outlive it, or the resume keeps the final step."""
    reference = run_in_process(runs_dir, *BEST, "name=reference")
    selected = reference.summary["selected_step"]
    assert selected != 6 and reference.summary["selection"] == "best"  # the case worth testing: best is not last

    real = runs.Run.write_summary

    def full(self, summary):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.summary_path))

    monkeypatch.setattr(runs.Run, "write_summary", full)
    with pytest.raises(UserError, match="no space left"):
        run_in_process(runs_dir, *BEST, "name=full")
    monkeypatch.setattr(runs.Run, "write_summary", real)
    run = runs.resolve("full", runs_dir)
    assert run.status == "failed" and (run.best_dir / checkpoints.folder_name(selected)).is_dir()

    result = peftlab("train", "resume=full", "-q")
    assert result.returncode == 0, result.stderr
    resumed = runs.resolve("full", runs_dir)
    assert resumed.summary["selected_step"] == selected and resumed.summary["selection"] == "best"
    assert "selection_note" not in resumed.summary
    expected, got = adapter_tensors(reference.adapter_dir), adapter_tensors(resumed.adapter_dir)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not resumed.best_dir.exists()  # removed once completed


KILL_AFTER_VALIDATION = """
import os, signal, sys
from peftlab import trainer
real = trainer.Trainer.validate
def validate(self):
    out = real(self)
    if self.step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # after the pass and its best weights, before its checkpoint
    return out
trainer.Trainer.validate = validate
from peftlab.cli import main
sys.argv = ["peftlab", "train", *sys.argv[1:]]
main()
"""


def test_a_best_found_after_the_newest_checkpoint_does_not_outlive_a_kill(runs_dir):
    """Killed after a new best at step 6 but before its checkpoint: the resume counts from step 4's checkpoint,
    whose best is step 2, and must report step 2's weights, not step 6's (trainer.max_steps=4 ends it there)."""
    args = ["model=tiny", "trainer.batch_size=16", "trainer.max_steps=6", "trainer.eval_every=2",
            "trainer.checkpoint_every=4", "optimizer.lr=0.3", "trainer.metric=loss", "name=killed"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_VALIDATION, *args], env={**os.environ, "KILL_AT": "6"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    run = runs.resolve("killed", runs_dir)
    losses = {x["step"]: x["loss"] for x in run.metrics() if x.get("split") == "validation"}
    assert losses[2] < losses[4] and losses[6] < losses[2], losses  # step 6 was a new best, step 4 was not
    kept = sorted(p.name for p in run.best_dir.iterdir())
    assert kept == ["step_0000002", "step_0000006"]  # the checkpoint's best and the newer one
    step2 = adapter_tensors(run.best_dir / "step_0000002")

    result = peftlab("train", "resume=killed", "trainer.max_steps=4", "-q")
    assert result.returncode == 0, result.stderr
    resumed = runs.resolve("killed", runs_dir)
    assert resumed.meta["resumed_from"] == "step_0000004"
    assert resumed.summary["selected_step"] == 2 and resumed.summary["best_validation"]["loss"] == losses[2]
    got = adapter_tensors(resumed.adapter_dir)
    assert all(torch.equal(step2[k], got[k]) for k in step2)


def test_a_key_metric_validation_cannot_measure_is_never_best_and_the_run_says_so(runs_dir, monkeypatch):
    """No generations on validation: exact match is NaN at every pass. NaN is not a best; the last step is kept, said."""
    from peftlab.config import choices, compose, search_path
    from peftlab.tasks.causal_lm import CausalLM
    from peftlab.train import train

    measure = CausalLM.measure

    def no_validation_generations(self, *args, full: bool, **kw):
        tally = measure(self, *args, full=full, **kw)
        return tally if full else {**tally, "rows": []}  # test (full) is generated whole, as always

    monkeypatch.setattr(CausalLM, "measure", no_validation_generations)
    overrides = ["model=tiny_lm", "dataset=arith", "task.max_new_tokens=4", "task.validation_generations=4",
                 "trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2", "name=nokey"]
    run = train(compose([*overrides, f"runs_dir={runs_dir}"]), overrides=overrides, argv=["peftlab", "train"],
                choices=choices(overrides, search_path([])), show_progress=False)
    assert run.status == "completed"
    summary = runs.resolve("nokey", runs_dir).summary
    assert summary["best_validation"] is None and summary["selected_step"] == 4
    assert "no validation pass gave a finite exact_match" in summary["selection_note"]


def test_a_causal_lm_that_diverges_fails_in_one_line(runs_dir):
    """Its validation generations see NaN logits first: that is the run's non-finite failure, not a traceback."""
    result = peftlab("train", "model=tiny_lm", "dataset=arith", "optimizer.lr=1e30", "trainer.max_steps=1",
                     "trainer.eval_every=0", "task.max_new_tokens=4", "task.validation_generations=4", "name=diverged")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and "the parameters have diverged; lower optimizer.lr" in lines[0]
    assert runs.resolve("diverged", runs_dir).status == "failed"


@pytest.mark.parametrize("typed, key", [("optimizer.lr=0.5", "optimizer.lr"), ("method.rank=32", "method.rank"),
                                        ("seed=7", "seed"), ("method=pissa", "method")])
def test_a_resume_that_would_change_what_the_run_computes_is_refused(runs_dir, typed, key):
    run = _interrupted_after(runs_dir, "changed")
    before = run.config_path.read_text()
    result = peftlab("train", "resume=changed", typed, "trainer.max_steps=10", "-q")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"'{typed}' differs from its {key}=" in lines[0] and "only trainer.max_steps" in lines[0]
    assert run.config_path.read_text() == before and runs.resolve("changed", runs_dir).status == "interrupted"


def test_a_resume_may_repeat_the_runs_own_overrides(runs_dir):
    """As a sweep's --continue does: the same values are not a change."""
    _interrupted_after(runs_dir, "same")
    result = peftlab("train", "resume=same", *TINY, "trainer.max_steps=10", "-q")
    assert result.returncode == 0, result.stderr
    assert runs.resolve("same", runs_dir).summary["steps"] == 10


def test_a_resume_typing_its_group_again_survives_an_edit_of_the_groups_yaml(runs_dir):
    """A sweep's --continue types ``method=lora`` again; the method's YAML edited since (here its
    description, as the stored config now differs from a fresh composition) is not a change of
    method: the run resumes with its own config.yaml, and the edit is said."""
    import yaml

    run = _interrupted_after(runs_dir, "edited")
    stored = yaml.safe_load(run.config_path.read_text())
    stored["method"]["description"] = "an older wording"
    run.config_path.write_text(yaml.safe_dump(stored))
    result = peftlab("train", "resume=edited", "method=lora", "trainer.max_steps=10", "-q")
    assert result.returncode == 0, result.stderr
    assert "configs/method/lora.yaml has changed since run" in result.stderr
    resumed = runs.resolve("edited", runs_dir)
    assert resumed.summary["steps"] == 10 and resumed.config["method"]["description"] == "an older wording"

"""A run under a launcher of several processes is one run: one folder, written by the main
process, and the same numbers as one process training on the whole global batch.

The two-process cases launch ``torchrun`` on the CPU (gloo), as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from peftlab.tasks.base import combine, part_of
from tests.conftest import peftlab

COMMON = ["model=tiny", "method=lora", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.log_every=1",
          "trainer.checkpoint_every=0", "seed=1", "-q"]


def launch(n: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node n -m peftlab ...`` on the CPU."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
                           "--standalone", "-m", "peftlab", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})})


def adapter(run) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted((run / "adapter").glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def lines(run, split: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if r["split"] == split]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same run as one process with batch 16 and as two with batch 8 each, with a regularizer
    that reads the model's parameter names (it would match nothing on a wrapped model)."""
    root = tmp_path_factory.mktemp("runs")
    extra = ["regularizer=[l2_pretrained]", "regularizer.l2_pretrained.weight=50", "optimizer.lr=5e-2"]
    one = peftlab("train", *COMMON, *extra, "trainer.batch_size=16", "name=one", env={"PEFTLAB_RUNS_DIR": str(root)})
    assert one.returncode == 0, one.stderr
    two = launch(2, "train", *COMMON, *extra, "trainer.batch_size=8", "name=two", env={"PEFTLAB_RUNS_DIR": str(root)})
    assert two.returncode == 0, two.stderr[-3000:]
    return root, two


def test_two_processes_make_one_run_folder_written_once(one_and_two):
    root, two = one_and_two
    folders = sorted((root / "two").iterdir())
    assert [f.name for f in folders] == ["v1"]
    run = folders[0]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["processes"] == 2
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    assert [r["step"] for r in lines(run, "train")] == [1, 2, 3, 4, 5, 6]  # not one line per process
    assert [r["step"] for r in lines(run, "validation")] == [3, 6]
    assert two.stdout.count("run folder:") == 1  # one process reports


def test_two_processes_equal_one_process_with_twice_the_batch(one_and_two):
    root, _ = one_and_two
    one, two = root / "one" / "v1", root / "two" / "v1"
    assert max_diff(adapter(one), adapter(two)) < 1e-5
    for split in ("train", "validation", "test"):
        for a, b in zip(lines(one, split), lines(two, split), strict=True):
            for key in ("loss", "reg/l2_pretrained", "accuracy", "f1_macro", "examples"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (split, key)
    # the regularizer saw the trainable parameters: its term grew from 0 as they moved
    assert lines(two, "train")[-1]["reg/l2_pretrained"] > 0


def test_two_processes_resume_from_a_checkpoint_bit_for_bit(tmp_path):
    """Per-process random streams (LoRA dropout) are in the checkpoint: resuming step 3 of 6 under the
    same launch ends where the uninterrupted run ends."""
    env = {"PEFTLAB_RUNS_DIR": str(tmp_path)}
    args = ["train", "model=tiny", "method=lora", "method.dropout=0.3", "trainer.max_steps=6", "trainer.eval_every=0",
            "trainer.checkpoint_every=3", "trainer.keep_checkpoints=2", "trainer.batch_size=8", "seed=2", "-q"]
    done = launch(2, *args, "name=whole", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = tmp_path / "whole" / "v1"
    rng = torch.load(whole / "checkpoints" / "step_0000003" / "rng.pt", weights_only=False)["processes"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])

    # The same run stopped after its step-3 checkpoint: what an interrupt leaves behind.
    cut = tmp_path / "cut" / "v1"
    cut.parent.mkdir()
    subprocess.run(["cp", "-r", str(whole), str(cut)], check=True)
    for gone in ("adapter", "summary.json", "checkpoints/step_0000006", "generations"):
        subprocess.run(["rm", "-rf", str(cut / gone)], check=True)
    meta = json.loads((cut / "meta.json").read_text())
    (cut / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    resumed = launch(2, "train", f"resume={cut}", "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((cut / "meta.json").read_text())["status"] == "completed"
    assert max_diff(adapter(whole), adapter(cut)) == 0.0
    assert [r["loss"] for r in lines(cut, "train")] == [r["loss"] for r in lines(whole, "train")]


def test_a_user_error_is_said_once_and_no_run_is_made(tmp_path):
    done = launch(2, "train", "model=tiny", "trainer.max_steps=2", "resume=no-such-run", "-q",
                  env={"PEFTLAB_RUNS_DIR": str(tmp_path)})
    assert done.returncode != 0
    assert done.stderr.count("error: ") == 1, done.stderr[-2000:]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_parts_of_a_split_are_the_split_in_order(count):
    from datasets import Dataset

    split = Dataset.from_dict({"x": list(range(10))})
    parts = [part_of(split, (i, count)) for i in range(count)]
    assert sum((list(p["x"]) for p in parts), []) == list(range(10))


def test_combined_tallies_add_numbers_and_concatenate_rows():
    a = {"confusion": torch.tensor([[1, 0], [2, 3]]), "loss_sum": 1.5, "rows": [{"i": 0}]}
    b = {"confusion": torch.tensor([[0, 4], [0, 1]]), "loss_sum": 0.25, "rows": [{"i": 1}, {"i": 2}]}
    whole = combine([a, b])
    assert torch.equal(whole["confusion"], torch.tensor([[1, 4], [2, 4]]))
    assert whole["loss_sum"] == 1.75 and whole["rows"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert a["rows"] == [{"i": 0}]  # the parts are left as they were


def test_classification_measured_in_parts_equals_the_whole():
    from peftlab.config import compose
    from peftlab.experiment import build_experiment

    exp = build_experiment(compose(["model=tiny", "method=lora"]))
    split, task = exp.splits["validation"], exp.task
    kwargs = dict(batch_size=16, device=torch.device("cpu"), full=True)
    whole = task.evaluate(exp.model, exp.tokenizer, split, **kwargs).metrics
    parts = [task.measure(exp.model, exp.tokenizer, split, part=(i, 3), **kwargs) for i in range(3)]
    combined = task.summarize(combine(parts)).metrics
    assert combined["examples"] == whole["examples"] == len(split)
    assert combined["accuracy"] == whole["accuracy"] and combined["f1_macro"] == whole["f1_macro"]
    assert combined["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_causal_lm_measured_in_parts_equals_the_whole():
    from peftlab.config import compose
    from peftlab.experiment import build_experiment

    exp = build_experiment(compose(["model=tiny_lm", "dataset=arith", "method=lora",
                                    "task.validation_generations=7", "task.max_new_tokens=4"]))
    split, task = exp.splits["validation"].select(range(12)), exp.task
    kwargs = dict(batch_size=4, device=torch.device("cpu"), full=False)
    whole = task.evaluate(exp.model, exp.tokenizer, split, **kwargs)
    parts = [task.measure(exp.model, exp.tokenizer, split, part=(i, 2), **kwargs) for i in range(2)]
    combined = task.summarize(combine(parts))
    assert combined.metrics["tokens"] == whole.metrics["tokens"]
    assert combined.metrics["loss"] == pytest.approx(whole.metrics["loss"], rel=1e-6)
    if "generated" in whole.metrics:
        assert combined.metrics["generated"] == whole.metrics["generated"] == 7
        assert [r["output"] for r in combined.rows] == [r["output"] for r in whole.rows]

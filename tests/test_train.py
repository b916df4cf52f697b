"""`peftlab train` end to end on the tiny model: run folders, resume, concurrency, regularizers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from peftlab import runs
from tests.conftest import peftlab

FAST = ["model=tiny", "trainer.max_steps=12", "trainer.eval_every=6", "trainer.log_every=3",
        "trainer.checkpoint_every=6", "trainer.batch_size=16", "-q"]


def only_run(root):
    found = runs.list_runs(root)
    assert len(found) == 1, found
    return found[0]


def test_train_writes_a_complete_run_folder(runs_dir):
    result = peftlab("train", *FAST, "seed=3")
    assert result.returncode == 0, result.stderr
    run = only_run(runs_dir)
    assert run.name == "lora-tiny-stdlib_docs" and run.version == "v1"
    assert str(run.path) in result.stdout.replace("\n", "")
    for item in ("config.yaml", "overrides.txt", "meta.json", "metrics.jsonl", "summary.json", "adapter", "checkpoints"):
        assert (run.path / item).exists(), item
    meta = run.meta
    assert meta["status"] == "completed" and meta["seed"] == 3
    assert meta["choices"]["method"] == "lora" and "ended_at" in meta and meta["argv"]
    assert "commit" in meta["git"] and "torch" in meta["environment"]["packages"]
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    assert config["seed"] == 3 and config["trainer"]["max_steps"] == 12 and config["method"]["rank"] == 8
    assert run.overrides() == [a for a in FAST if a != "-q"] + ["seed=3"]
    summary = run.summary
    assert set(summary["test"]) >= {"accuracy", "loss", "f1_macro"}
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    assert summary["steps"] == 12 and 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0 and summary["wall_time_s"] > 0
    lines = run.metrics()
    train_steps = [r["step"] for r in lines if r["split"] == "train"]
    assert train_steps == [3, 6, 9, 12]
    assert [r["step"] for r in lines if r["split"] == "validation"] == [6, 12]
    assert [r["split"] for r in lines].count("test") == 1
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step_0000006", "step_0000012"]
    assert (run.adapter_dir / "adapter.safetensors").is_file()


def test_resume_continues_exactly_where_the_run_stopped(runs_dir):
    common = ["model=tiny", "trainer.batch_size=16", "trainer.log_every=2", "trainer.eval_every=0",
              "trainer.schedule=constant", "trainer.warmup_ratio=0", "trainer.checkpoint_every=4", "-q"]
    straight = peftlab("train", *common, "trainer.max_steps=8", "name=straight")
    assert straight.returncode == 0, straight.stderr
    first = peftlab("train", *common, "trainer.max_steps=4", "name=stopped")
    assert first.returncode == 0, first.stderr
    stopped = runs.resolve("stopped", runs_dir)
    # Make the short run look like one that was interrupted after its step-4 checkpoint.
    stopped.set_status("interrupted")
    (stopped.path / "summary.json").unlink()
    resumed = peftlab("train", "resume=stopped", "trainer.max_steps=8", "-q")
    assert resumed.returncode == 0, resumed.stderr
    stopped = runs.resolve("stopped", runs_dir)
    assert stopped.status == "completed" and stopped.meta.get("resumed_from") == "step_0000004"
    a = [r for r in runs.resolve("straight", runs_dir).metrics() if r["split"] == "train"]
    b = [r for r in stopped.metrics() if r["split"] == "train"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 6, 8]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    assert runs.resolve("straight", runs_dir).summary["test"]["accuracy"] == pytest.approx(stopped.summary["test"]["accuracy"])


def test_resume_refuses_a_completed_run(runs_dir):
    assert peftlab("train", *FAST, "name=done").returncode == 0
    result = peftlab("train", "resume=done")
    assert result.returncode == 2 and "already completed" in result.stderr


def test_two_runs_started_together_get_two_versions(runs_dir):
    cmd = [sys.executable, "-m", "peftlab", "train", *FAST, "name=race"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    versions = sorted(r.version for r in runs.list_runs(runs_dir))
    assert versions == ["v1", "v2"]
    assert all(r.status == "completed" for r in runs.list_runs(runs_dir))


def test_regularizers_compose_and_are_logged(runs_dir):
    result = peftlab("train", *FAST, "regularizer=[l2_pretrained]", "regularizer.l2_pretrained.weight=0.5")
    assert result.returncode == 0, result.stderr
    lines = [r for r in only_run(runs_dir).metrics() if r["split"] == "train"]
    assert all("reg/l2_pretrained" in r for r in lines)
    # Parameters leave their initial values, and the logged total is task + weight * term.
    assert all(r["reg/l2_pretrained"] > 0 for r in lines)
    for r in lines:
        assert r["loss"] == pytest.approx(r["loss/task"] + 0.5 * r["reg/l2_pretrained"], rel=1e-5)


def test_full_finetuning_trains_every_parameter(runs_dir):
    result = peftlab("train", *FAST, "method=full")
    assert result.returncode == 0, result.stderr
    summary = only_run(runs_dir).summary
    assert summary["trainable_params"] == summary["total_params"]


def test_dry_run_shows_config_and_parameters_without_training(runs_dir):
    result = peftlab("train", "model=tiny", "method.rank=4", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "rank: 4" in result.stdout and "LoRAAdapter" in result.stdout and "estimated memory" in result.stdout
    assert not runs_dir.exists() or not runs.list_runs(runs_dir)


def test_summary_reports_the_metric_the_runs_table_shows(runs_dir):
    assert peftlab("train", *FAST).returncode == 0
    listing = peftlab("runs")
    assert listing.returncode == 0
    run = only_run(runs_dir)
    assert "lora-tiny-stdlib_docs" in listing.stdout and "completed" in listing.stdout
    assert f"{run.summary['test']['accuracy']:.3f}"[:4] in listing.stdout
    shown = peftlab("show", "lora-tiny-stdlib_docs")
    assert shown.returncode == 0 and "trainer.max_steps" in shown.stdout and str(run.path) in shown.stdout.replace("\n", "")

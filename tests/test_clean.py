"""``peftlab clean``: checkpoints of completed runs, whole runs after a confirmation, never a live run.

Run folders are written by hand (meta.json, summary.json, a checkpoint folder); nothing is trained.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab import runs

CHECKPOINT_BYTES = 200_000


def clean(*args: str, answer: str | None = None) -> subprocess.CompletedProcess:
    """`peftlab clean ...` in a subprocess (the test's runs folder comes from PEFTLAB_RUNS_DIR)."""
    return subprocess.run([sys.executable, "-m", "peftlab", "clean", *args], input=answer, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)


def make_run(root: Path, name: str, status: str, *, checkpoint: bool = True, sweep: dict | None = None) -> runs.Run:
    run = runs.allocate(root, name)
    meta = {"status": status, "started_at": "2024-01-01T00:00:00+00:00", "seed": 0, "pid": _dead_pid(),
            "host": os.uname().nodename, "choices": {"method": "lora"}, **({"sweep": sweep} if sweep else {})}
    run.meta_path.write_text(json.dumps(meta))
    if status == "completed":
        run.summary_path.write_text(json.dumps({"test": {"accuracy": 0.5}}))
        write_adapter(run)
    if checkpoint:
        folder = run.checkpoints_dir / "step_0000010"
        folder.mkdir(parents=True)
        (folder / "adapter.safetensors").write_bytes(b"\0" * CHECKPOINT_BYTES)
    return run


def write_adapter(run: runs.Run) -> None:
    """An adapter folder as training saves it: its config and safetensors weights."""
    import numpy as np
    from safetensors.numpy import save_file

    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps({"config": {}, "labels": ["a", "b"]}))
    save_file({"layer.lora_A": np.zeros((2, 4), dtype=np.float32)}, str(run.adapter_dir / "adapter.safetensors"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def store(runs_dir) -> dict[str, runs.Run]:
    return {status: make_run(runs_dir, f"lora-{status}", status)
            for status in ("completed", "interrupted", "failed", "running")}


# --------------------------------------------------------------------------- checkpoints


def test_clean_removes_only_the_checkpoints_of_completed_runs_and_says_why_others_stay(store):
    res = clean()
    assert res.returncode == 0, res.stdout + res.stderr
    assert not store["completed"].checkpoints_dir.exists()
    assert store["completed"].summary_path.is_file()  # the run itself stays
    for status in ("interrupted", "failed", "running"):
        assert store[status].checkpoints(), status
    out = res.stdout
    assert "kept checkpoints of lora-interrupted/v1: interrupted: `peftlab train resume=lora-interrupted/v1`" in out
    assert "kept checkpoints of lora-failed/v1: failed: " in out
    assert "kept checkpoints of lora-running/v1: interrupted (its process is gone)" in out  # stale
    assert "removed checkpoints of lora-completed/v1 (195.3 KB)" in out
    assert "freed 195.3 KB (checkpoints of 1 completed run)" in out


@pytest.mark.parametrize("damage", ["adapter folder gone", "weights gone", "weights cut"])
def test_a_completed_run_whose_adapter_is_lost_keeps_its_checkpoints(runs_dir, damage):
    """They are then the only copy of what it trained."""
    run = make_run(runs_dir, "lora-lost", "completed")
    weights = run.adapter_dir / "adapter.safetensors"
    if damage == "adapter folder gone":
        shutil.rmtree(run.adapter_dir)
    elif damage == "weights gone":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:20])
    res = clean()
    assert res.returncode == 0, res.stdout + res.stderr
    assert run.checkpoints()
    assert ("kept checkpoints of lora-lost/v1: completed, but its adapter is missing or damaged: "
            "the checkpoints hold its only trained weights") in res.stdout


def test_clean_dry_run_removes_nothing(store):
    res = clean("--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would remove checkpoints of lora-completed/v1" in res.stdout and "would free 195.3 KB" in res.stdout
    assert store["completed"].checkpoints()


def test_clean_keeps_the_checkpoints_of_a_run_a_live_process_writes(store):
    with store["running"].own():  # as training holds its run
        res = clean("lora-running")
    assert res.returncode == 0, res.stderr
    assert f"kept checkpoints of lora-running/v1: being written by process {os.getpid()}" in res.stdout
    assert store["running"].checkpoints()


# --------------------------------------------------------------------------- whole runs


def test_clean_runs_asks_first_and_removes_what_matches(store, runs_dir):
    declined = clean("--runs", "--where", "status=failed", answer="n\n")
    assert declined.returncode == 1 and "nothing removed" in declined.stdout
    assert "remove 1 run (195." in declined.stdout and "KB): lora-failed/v1? [y/N]" in declined.stdout
    assert store["failed"].path.is_dir()
    accepted = clean("--runs", "--where", "status=failed", answer="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert not (runs_dir / "lora-failed").exists()  # the name's folder goes with its last version
    assert "removed 1 run, freed" in accepted.stdout
    assert sorted(r.name for r in runs.list_runs(runs_dir)) == ["lora-completed", "lora-interrupted", "lora-running"]


def test_clean_runs_without_an_answer_removes_nothing(store):
    res = clean("--runs", "lora-completed", answer="")
    assert res.returncode == 1 and store["completed"].path.is_dir()


def test_clean_runs_yes_removes_named_runs_without_asking(store, runs_dir):
    res = clean("--runs", "lora-completed/v1", "lora-interrupted", "--yes")
    assert res.returncode == 0, res.stderr
    assert "removed 2 runs, freed" in res.stdout and "?" not in res.stdout
    assert sorted(r.name for r in runs.list_runs(runs_dir)) == ["lora-failed", "lora-running"]


def test_clean_runs_refuses_a_run_a_live_process_writes(store):
    with store["running"].own():
        res = clean("--runs", "lora-running", "lora-failed", "--yes")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run 'lora-running/v1' is being written by process")
    assert "nothing was removed" in lines[0]
    assert store["running"].path.is_dir() and store["failed"].path.is_dir()


def test_removing_a_sweep_member_makes_it_pending_again(runs_dir):
    from peftlab import sweep as sw

    sweep_dir = runs_dir / "sweeps" / "seed" / "v1"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "seed", "version": "v1", "count": 1,
                                                      "members": [{"index": 0, "overrides": ["seed=0"]}]}))
    make_run(runs_dir, "member", "completed",
             sweep={"path": "sweeps/seed/v1", "name": "seed", "version": "v1", "member": 0})
    assert sw.state(sweep_dir).status == "completed"
    res = clean("--runs", "--where", "sweep=seed/v1", "--yes")
    assert res.returncode == 0, res.stderr
    assert [m.status for m in sw.members(sweep_dir)] == ["pending"]


@pytest.mark.parametrize("args, says", [
    (("--runs",), "--runs removes whole runs: name them"),
    (("--runs", "nope", "--yes"), "no such run, sweep or folder: nope"),
    (("--where", "status>x"), "needs a number"),
    (("--runs", "--where", "methd=lora"), "did you mean 'method'"),
])
def test_clean_mistakes_are_one_line_exit_2(store, args, says):
    res = clean(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], res.stderr
    assert all(r.path.is_dir() and r.checkpoints() for r in store.values())


@pytest.mark.parametrize("argv", [("clean", "--dry-run"), ("runs", "--where", "status=failed"),
                                  ("clean", "--runs", "lora-failed", "--dry-run")])
def test_managing_runs_imports_no_heavy_library(store, argv):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "peftlab", *argv], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & {"torch", "transformers", "datasets", "accelerate"}

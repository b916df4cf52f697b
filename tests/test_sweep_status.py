"""A sweep's status, what --continue runs again, and compare of a sweep: queries over run folders.

Every test writes sweep.json and the members' meta.json / summary.json /
config.yaml by hand, as a sweep leaves them; nothing is trained.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab import runs
from tests.conftest import peftlab

SWEEP = "sweeps/rank/v1"
GRID = [["method.rank=2"], ["method.rank=4"], ["method.rank=8"], ["method.rank=16"]]


def make_sweep(root: Path, members=GRID, **fields) -> Path:
    sweep_dir = root / SWEEP
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "name": "rank", "version": "v1", "grid": ["method.rank=2,4,8,16"], "swept": ["method.rank"],
        "count": len(members), "sweeper": "basic", "hydra_overrides": [], "config_dirs": [],
        "members": [{"index": i, "overrides": o} for i, o in enumerate(members)], **fields,
    }))
    return sweep_dir


def make_member(root: Path, index: int, status: str, *, version: int = 1, started: str = "2024-01-01T00:00:00+00:00",
                acc: float = 0.8, pid: int | None = None, checkpoint: bool = False, sweep: str = SWEEP) -> runs.Run:
    """A member's run folder as train leaves it: meta.json stamped with the sweep, config.yaml, summary.json."""
    rank = int(GRID[index][0].split("=")[1]) if index < len(GRID) else index
    run = runs.Run(root / f"lora-tiny-r{rank}" / f"v{version}")
    run.path.mkdir(parents=True)
    config = {"method": {"_target_": "peftlab.methods.lora.LoRA", "rank": rank}, "seed": 0,
              "trainer": {"metric": "accuracy"}, "dataset": {"_target_": "peftlab.data.builtin.load_stdlib_docs"}}
    run.config_path.write_text(yaml.safe_dump(config))
    run.overrides_path.write_text(f"method.rank={rank}\n")
    name, ver = sweep.split("/")[-2:]
    run.meta_path.write_text(json.dumps({
        "status": status, "started_at": started, "seed": 0, "host": socket.gethostname(), "pid": pid or _dead_pid(),
        "choices": {"method": "lora", "model": "tiny", "dataset": "stdlib_docs"},
        "sweep": {"path": sweep, "name": name, "version": ver, "member": index},
        **({"error": "method.rank=16 is too large"} if status == "failed" else {}),
    }))
    if status == "completed":
        run.summary_path.write_text(json.dumps({"metric": "accuracy", "selection": "best", "test": {"accuracy": acc},
                                                "best_validation": {"step": 4, "accuracy": acc}}))
    if checkpoint:
        (run.checkpoints_dir / "step_0000004").mkdir(parents=True)
    return run


_DEAD: list[int] = []


def _dead_pid() -> int:
    if not _DEAD:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        _DEAD.append(proc.pid)
    return _DEAD[0]


@pytest.fixture()
def half_done(runs_dir) -> Path:
    """Member 0 completed, 1 interrupted after a checkpoint, 2 failed, 3 never started."""
    sweep_dir = make_sweep(runs_dir)
    make_member(runs_dir, 0, "completed")
    make_member(runs_dir, 1, "interrupted", checkpoint=True)
    make_member(runs_dir, 2, "failed")
    runs.Run(runs_dir / "unrelated" / "v1").path.mkdir(parents=True)  # a run of no sweep
    (runs_dir / "unrelated" / "v1" / "meta.json").write_text(json.dumps({"status": "completed"}))
    return sweep_dir


# --------------------------------------------------------------------------- status


def test_status_is_each_members_newest_run(half_done, runs_dir):
    from peftlab import sweep as sw

    found = sw.state(half_done)
    assert [(m.index, m.status) for m in found.members] == [
        (0, "completed"), (1, "interrupted"), (2, "failed"), (3, "pending")]
    assert found.members[2].error == "method.rank=16 is too large"
    assert found.members[3].run is None
    assert found.status == "interrupted" and found.counts == {"completed": 1, "interrupted": 1, "failed": 1,
                                                              "pending": 1}
    # a retry of member 2 that completed is now what member 2 is
    make_member(runs_dir, 2, "completed", version=2, started="2024-01-02T00:00:00+00:00")
    assert sw.members(half_done)[2].status == "completed"
    assert sw.members(half_done)[2].run.label == "lora-tiny-r8/v2"


def test_a_run_marked_running_is_running_only_while_a_live_process_owns_it(runs_dir):
    from peftlab import sweep as sw

    sweep_dir = make_sweep(runs_dir, members=GRID[:1])
    run = make_member(runs_dir, 0, "running")
    assert sw.state(sweep_dir).members[0].status == "interrupted"  # its process is gone
    with run.own():
        found = sw.state(sweep_dir)
        assert found.members[0].status == "running" and found.status == "running"


def test_the_sweep_is_completed_failed_or_running_as_its_members_and_launcher_say(runs_dir):
    from peftlab import sweep as sw

    sweep_dir = make_sweep(runs_dir, members=GRID[:2])
    make_member(runs_dir, 0, "completed")
    make_member(runs_dir, 1, "completed")
    assert sw.state(sweep_dir).status == "completed"
    make_member(runs_dir, 1, "failed", version=2, started="2024-01-02T00:00:00+00:00")
    assert sw.state(sweep_dir).status == "failed"
    # a live process that launched the sweep (here: this test's parent) makes it running
    (sweep_dir / "hydra").mkdir()
    (sweep_dir / "hydra" / "launch.json").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert sw.state(sweep_dir).status == "running"


@pytest.mark.skipif(runs.process_start() is None, reason="process start times are read from /proc")
def test_a_launchers_pid_taken_by_another_process_does_not_keep_the_sweep_running(runs_dir):
    """After a restart (or much later) the recorded pid can name another live process: its start tells."""
    from peftlab import sweep as sw

    sweep_dir = make_sweep(runs_dir, members=GRID[:1])
    make_member(runs_dir, 0, "completed")
    (sweep_dir / "hydra").mkdir()
    record = {"pid": os.getppid(), "host": socket.gethostname()}
    launch = sweep_dir / "hydra" / "launch.json"
    launch.write_text(json.dumps({**record, "pid_start": runs.process_start(os.getppid())}))
    assert sw.state(sweep_dir).status == "running"  # the very process that launched it
    launch.write_text(json.dumps({**record, "pid_start": "another-boot:12345"}))
    assert sw.state(sweep_dir).status == "completed"  # the pid is alive, but it is someone else


def test_a_search_sweepers_members_come_from_their_runs(runs_dir):
    from peftlab import sweep as sw

    sweep_dir = make_sweep(runs_dir, members=[], sweeper="optuna")
    (sweep_dir / "sweep.json").write_text(json.dumps({**sw.read(sweep_dir), "count": 3}))
    make_member(runs_dir, 0, "completed")
    make_member(runs_dir, 1, "completed")
    found = sw.state(sweep_dir)
    assert [m.overrides for m in found.members] == [["method.rank=2"], ["method.rank=4"]]
    assert found.expected == 3 and found.status == "interrupted"  # a trial is missing


def test_a_member_stamped_with_an_absolute_sweep_path_is_found(tmp_path, runs_dir):
    from peftlab import sweep as sw

    sweep_dir = make_sweep(runs_dir, members=GRID[:1])
    make_member(runs_dir, 0, "completed", sweep=str(sweep_dir.resolve()))
    assert sw.state(sweep_dir).status == "completed"


def test_sweep_status_command_lists_the_members(half_done, runs_dir, tmp_path):
    res = peftlab("sweep", "--status", "rank", "--runs-dir", str(runs_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "sweep rank/v1: 1 completed, 1 failed, 1 interrupted, 1 pending of 4 (interrupted)"
    assert "  #1 interrupted: method.rank=4  (lora-tiny-r4/v1)" in lines
    assert "  #3 pending: method.rank=16  (no run yet)" in lines
    assert any(line.startswith("continue it with: peftlab sweep --continue") for line in lines)


def test_sweep_status_of_an_unknown_sweep_is_one_line(runs_dir, tmp_path):
    make_sweep(runs_dir)
    res = peftlab("sweep", "--status", "rnak", "--runs-dir", str(runs_dir), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "did you mean 'rank'" in res.stderr
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- --continue


def test_continue_reruns_every_member_that_did_not_complete(half_done, runs_dir):
    from peftlab.sweep.launch import jobs_to_continue
    from peftlab.sweep.status import members

    jobs = jobs_to_continue(members(half_done))
    interrupted = runs_dir / "lora-tiny-r4" / "v1"
    assert jobs == [
        {"index": 1, "overrides": ["method.rank=4"], "resume": f"resume='{interrupted.resolve()}'"},
        {"index": 2, "overrides": ["method.rank=8"]},  # failed: starts again
        {"index": 3, "overrides": ["method.rank=16"]},  # never started
    ]


def test_continue_starts_again_a_member_interrupted_before_its_first_checkpoint(runs_dir):
    from peftlab.sweep.launch import jobs_to_continue
    from peftlab.sweep.status import members

    sweep_dir = make_sweep(runs_dir, members=GRID[:2])
    make_member(runs_dir, 0, "interrupted")
    make_member(runs_dir, 1, "running", checkpoint=True)  # killed: stale, resumes from its checkpoint
    jobs = jobs_to_continue(members(sweep_dir))
    assert jobs[0] == {"index": 0, "overrides": ["method.rank=2"]}
    assert jobs[1]["resume"].endswith("lora-tiny-r4/v1'")


@pytest.mark.parametrize("failure, rerun", [("nonfinite", False), ("invalid", False), ("crash", False),
                                              (None, False), ("storage", True)])
def test_a_study_keeps_a_failed_setting_as_a_result_unless_the_disk_failed_it(runs_dir, failure, rerun):
    """A study's --continue (rerun_failed=False) keeps a diverged or invalid setting as a result;
    one failed by a full disk says nothing about its setting: it resumes from its checkpoint."""
    from peftlab.sweep.launch import jobs_to_continue
    from peftlab.sweep.status import members

    sweep_dir = make_sweep(runs_dir, members=GRID[:2])
    make_member(runs_dir, 0, "completed")
    failed = make_member(runs_dir, 1, "failed", checkpoint=True)
    if failure:
        failed.write_meta(failure=failure)
    (member,) = [m for m in members(sweep_dir) if m.index == 1]
    assert member.retryable == rerun
    jobs = jobs_to_continue(members(sweep_dir), rerun_failed=False)
    expected = [{"index": 1, "overrides": ["method.rank=4"], "resume": f"resume='{failed.path.resolve()}'"}]
    assert jobs == (expected if rerun else [])
    assert [j["index"] for j in jobs_to_continue(members(sweep_dir))] == [1]  # a sweep's --continue reruns any


def test_continue_of_a_completed_sweep_has_nothing_to_do(runs_dir, tmp_path):
    sweep_dir = make_sweep(runs_dir, members=GRID[:2])
    make_member(runs_dir, 0, "completed")
    make_member(runs_dir, 1, "completed")
    res = peftlab("sweep", "--continue", str(sweep_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all 2 runs completed; nothing to continue" in res.stdout
    assert not list(sweep_dir.glob("hydra*"))  # nothing was launched


def test_continue_refuses_a_member_run_a_live_process_owns(half_done, runs_dir):
    from peftlab import sweep as sw

    run = runs.Run(runs_dir / "lora-tiny-r4" / "v1")
    with run.own():
        with pytest.raises(runs.RunBusy, match=f"run '{run.path}' .*member #1 .*process {os.getpid()}"):
            sw.resume(str(half_done))
    assert not list(half_done.glob("hydra*"))


# --------------------------------------------------------------------------- compare


def test_compare_of_a_sweep_reads_its_members_newest_runs(half_done, runs_dir, tmp_path):
    make_member(runs_dir, 2, "completed", version=2, started="2024-01-02T00:00:00+00:00", acc=0.9)
    res = peftlab("compare", "sweeps/rank/v1", "--runs-dir", str(runs_dir), "--format", "csv", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(r["method.rank"] for r in rows) == ["2", "8"]  # completed members only; the unrelated run not
    assert "1 run not completed (1 interrupted) left out" in res.stderr
    assert "1 member(s) of sweep" in res.stderr and "have no run folder yet" in res.stderr

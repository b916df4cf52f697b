"""`peftlab sweep`: grids through Hydra's multirun (basic, joblib, submitit, optuna), --continue, compare."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peftlab.config import config_dir
from tests.conftest import peftlab
from tests.fabricated_runs import as_if_stopped_early, set_config

BASE = ["model=tiny", "trainer.max_steps=4", "trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.batch_size=8"]
GRID = ["method=lora,pissa", "method.rank=2,4"]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


needs_joblib = pytest.mark.skipif(not _installed("hydra_plugins.hydra_joblib_launcher"),
                                  reason="hydra-joblib-launcher is not installed (pip install 'peftlab[sweep]')")
needs_submitit = pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                                    reason="hydra-submitit-launcher is not installed (pip install 'peftlab[sweep]')")
needs_optuna = pytest.mark.skipif(not _installed("hydra_plugins.hydra_optuna_sweeper"),
                                  reason="hydra-optuna-sweeper is not installed (pip install 'peftlab[sweep]')")


def _sweep_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in (runs / "sweeps").glob("*/v*/sweep.json"))


def _members(sweep_dir: Path) -> list[dict]:
    """Each member as its run folders say (the newest run whose meta.json names the sweep and member)."""
    from peftlab import sweep as sw

    return [{"index": m.index, "overrides": m.overrides, "status": m.status, "error": m.error,
             "run": str(m.run.path) if m.run is not None else None} for m in sw.members(sweep_dir)]


def _member_run(sweep_dir: Path, member: dict) -> Path:
    """The member's newest run folder (what `peftlab compare` reads)."""
    return Path(member["run"])


def _sweep_status(sweep_dir: Path) -> str:
    from peftlab import sweep as sw

    return sw.state(sweep_dir).status


def _runs_with_status(runs: Path, status: str) -> list[Path]:
    found = []
    for meta in runs.glob("*/v*/meta.json"):
        try:
            if json.loads(meta.read_text()).get("status") == status:
                found.append(meta.parent)
        except ValueError:  # being written
            continue
    return sorted(found)


def _check_completed(sweep_dir: Path, n: int) -> list[dict]:
    members = _members(sweep_dir)
    assert len(members) == n
    assert [m["status"] for m in members] == ["completed"] * n, members
    paths = {_member_run(sweep_dir, m) for m in members}
    assert len(paths) == n
    for m in members:
        run = _member_run(sweep_dir, m)
        assert json.loads((run / "meta.json").read_text())["status"] == "completed"
        assert (run / "overrides.txt").read_text().split() == m["overrides"]
    return members


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """One sequential 2x2 sweep shared by the tests that only read it."""
    runs = tmp_path_factory.mktemp("grid") / "runs"
    res = peftlab("sweep", *BASE, *GRID, env={"PEFTLAB_RUNS_DIR": str(runs)})
    return runs, res


# --------------------------------------------------------------------------- planning (in process, fast)


def test_plan_counts_with_hydras_own_expansion(runs_dir):
    from peftlab import sweep as sw

    p = sw.plan(["model=tiny", "method=lora,pissa", "method.rank=4,8,16", "seed=range(3)"])
    assert p.count == 18 and len(p.members) == 18
    assert p.describe().startswith("18 runs (2 method × 3 method.rank × 3 seed")
    assert p.name == "method-method.rank-seed"
    assert ["model=tiny", "method=lora", "method.rank=4", "seed=0"] == p.members[0]
    assert not (runs_dir / "sweeps").exists()  # planning creates nothing
    globbed = sw.plan(["model=tiny", "method=glob(*ora)"])
    shipped = sorted(p.stem for p in (config_dir() / "method").glob("*.yaml") if p.stem.endswith("ora"))
    assert len(shipped) >= 4 and sorted(m[-1] for m in globbed.members) == [f"method={n}" for n in shipped]


def test_sweep_module_imports_no_torch():
    code = "import sys, peftlab.sweep, peftlab.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("bad, says", [
    ("method=", "no value"),
    ("method.rank=4,,8", "cannot parse"),
    ("seed=range(3,3)", "no values"),
    ("method=lora,lorra", "did you mean 'lora'"),
])
def test_empty_or_malformed_grid_is_one_line_exit_2(runs_dir, bad, says):
    res = peftlab("sweep", *BASE, bad)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (runs_dir / "sweeps").exists()


# --------------------------------------------------------------------------- launchers


def test_grid_runs_every_member_and_records_it(grid_sweep):
    runs, res = grid_sweep
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "4 runs" in lines[0] and "2 method × 2 method.rank" in lines[0], res.stdout
    (sweep_dir,) = _sweep_dirs(runs)
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert data["name"] == "method-method.rank" and data["version"] == sweep_dir.name == "v1"
    assert data["grid"] == GRID and _sweep_status(sweep_dir) == "completed"
    assert [m["overrides"][-2:] for m in data["members"]] == [m["overrides"][-2:] for m in _members(sweep_dir)]
    assert not (sweep_dir / "members").exists()  # the run folders alone say how the members ended
    members = _check_completed(sweep_dir, 4)
    for m in members:
        stamp = json.loads((_member_run(sweep_dir, m) / "meta.json").read_text())["sweep"]
        assert stamp == {"path": "sweeps/method-method.rank/v1", "name": "method-method.rank", "version": "v1",
                         "id": data["id"], "member": m["index"]}
    assert [m["overrides"][-2:] for m in members] == [
        ["method=lora", "method.rank=2"], ["method=lora", "method.rank=4"],
        ["method=pissa", "method.rank=2"], ["method=pissa", "method.rank=4"],
    ]
    assert len(_runs_with_status(runs, "completed")) == 4
    assert f"peftlab compare {sweep_dir}" in res.stdout


def test_compare_reads_the_sweep_folder(grid_sweep):
    runs, _ = grid_sweep
    (sweep_dir,) = _sweep_dirs(runs)
    res = peftlab("compare", str(sweep_dir), "--format", "csv")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4
    table = peftlab("compare", str(sweep_dir), env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "4 run(s), 4 configuration(s)" in table.stdout
    status = peftlab("sweep", "--status", "method-method.rank", env={"PEFTLAB_RUNS_DIR": str(runs)})
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("sweep method-method.rank/v1: 4 completed of 4 (completed)\n"), status.stdout


@needs_joblib
def test_jobs_runs_members_in_parallel_with_joblib(runs_dir):
    res = peftlab("sweep", *BASE, *GRID, "--jobs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 runs" in res.stdout.splitlines()[0] and "joblib" in res.stdout.splitlines()[0]
    (sweep_dir,) = _sweep_dirs(runs_dir)
    _check_completed(sweep_dir, 4)
    assert json.loads((sweep_dir / "sweep.json").read_text())["launcher"] == "joblib"


@needs_submitit
def test_submitit_local_executor(runs_dir):
    res = peftlab("sweep", *BASE, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 runs" in res.stdout.splitlines()[0]
    (sweep_dir,) = _sweep_dirs(runs_dir)
    _check_completed(sweep_dir, 2)
    assert list((sweep_dir / "hydra" / ".submitit").glob("*/*_result.pkl"))


@needs_optuna
def test_optuna_searches_the_learning_rate(runs_dir):
    res = peftlab("sweep", *BASE, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                  "optimizer.lr=tag(log,interval(1e-4,1e-2))")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 runs" in res.stdout.splitlines()[0] and "maximize accuracy" in res.stdout.splitlines()[0]
    (sweep_dir,) = _sweep_dirs(runs_dir)
    members = _check_completed(sweep_dir, 2)
    lrs = [float(o.split("=")[1]) for m in members for o in m["overrides"] if o.startswith("optimizer.lr=")]
    assert len(lrs) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert len(_runs_with_status(runs_dir, "completed")) == 2


# --------------------------------------------------------------------------- failures and --continue


def test_a_member_user_error_fails_only_that_member(runs_dir):
    res = peftlab("sweep", *BASE, "method.rank=4,1000")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 completed, 1 failed" in res.stdout
    (sweep_dir,) = _sweep_dirs(runs_dir)
    ok, bad = _members(sweep_dir)
    assert ok["status"] == "completed" and _member_run(sweep_dir, ok).is_dir()
    assert bad["status"] == "failed" and "method.rank=1000" in bad["error"] and "method.rank <=" in bad["error"]
    # it failed before training made its folder: it gets one anyway, marked failed with the error
    recorded = json.loads((_member_run(sweep_dir, bad) / "meta.json").read_text())
    assert recorded["status"] == "failed" and recorded["failure"] == "invalid"  # the setting's doing: a result
    assert _sweep_status(sweep_dir) == "failed"


def test_killed_sweep_continues_with_only_the_missing_members(runs_dir):
    cmd = [sys.executable, "-m", "peftlab", "sweep", *BASE, "seed=0,1,2,3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ})
    try:
        deadline = time.monotonic() + 240
        while len(_runs_with_status(runs_dir, "completed")) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sweep did not complete 2 runs in time"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    (sweep_dir,) = _sweep_dirs(runs_dir)
    done_before = {p: (p / "meta.json").read_text() for p in _runs_with_status(runs_dir, "completed")}
    assert 2 <= len(done_before) < 4

    res = peftlab("sweep", "--continue", str(sweep_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{4 - len(done_before)} of 4 runs to go" in res.stdout.splitlines()[0], res.stdout
    members = _check_completed(sweep_dir, 4)
    completed = _runs_with_status(runs_dir, "completed")
    assert len(completed) == 4
    seeds = sorted(int(json.loads((p / "meta.json").read_text())["seed"]) for p in completed)
    assert seeds == [0, 1, 2, 3]  # every member exactly once: nothing completed was re-run
    for p, meta in done_before.items():
        assert (p / "meta.json").read_text() == meta
    assert set(done_before) <= {_member_run(sweep_dir, m) for m in members}

    again = peftlab("sweep", "--continue", str(sweep_dir))
    assert again.returncode == 0 and "nothing to continue" in again.stdout
    assert len(_runs_with_status(runs_dir, "completed")) == 4


def test_a_moved_run_store_continues_in_its_new_place(tmp_path, runs_dir):
    """--runs-dir becomes a runs_dir= among the members' overrides; the sweep's own folder decides where runs go."""
    old, new = tmp_path / "old-runs", tmp_path / "moved"
    res = peftlab("sweep", *BASE, "seed=0,1", "--runs-dir", str(old))
    assert res.returncode == 0, res.stdout + res.stderr
    shutil.move(str(old), str(new))
    (sweep_dir,) = _sweep_dirs(new)
    dropped = Path(_members(sweep_dir)[1]["run"])
    shutil.rmtree(dropped)  # member 1 is pending again

    res = peftlab("sweep", "--continue", str(sweep_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not old.exists()  # nothing went back to where the store was
    members = _check_completed(sweep_dir, 2)
    assert all(Path(m["run"]).parent.parent == new for m in members)
    assert yaml.safe_load((Path(members[1]["run"]) / "config.yaml").read_text())["runs_dir"] == str(new)


def _fake_sweep(runs: Path, run_meta: dict | None) -> Path:
    """A sweep folder with one member, and (optionally) the run it started, stamped as train stamps it."""
    import socket

    if run_meta is not None:
        run = runs / "lora-tiny-stdlib_docs" / "v1"
        run.mkdir(parents=True)
        stamp = {"path": "sweeps/seed/v1", "name": "seed", "version": "v1", "member": 0}
        (run / "meta.json").write_text(json.dumps({"host": socket.gethostname(), "sweep": stamp, **run_meta}))
        (run / "summary.json").write_text("{}")
    sweep_dir = runs / "sweeps" / "seed" / "v1"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "name": "seed", "version": "v1", "grid": ["seed=0"], "count": 1,
        "members": [{"index": 0, "overrides": ["seed=0"]}],
    }))
    return sweep_dir


@pytest.mark.parametrize("run_status, member_status", [("completed", "completed"), ("running", "interrupted")])
def test_a_member_killed_before_it_ended_keeps_its_run(runs_dir, run_status, member_status):
    from peftlab import sweep as sw

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # train stamped the member's run as it created it; then the member's process was killed.
    sweep_dir = _fake_sweep(runs_dir, {"status": run_status, "pid": dead.pid})
    (member,) = _members(sweep_dir)
    assert member["status"] == member_status
    assert _member_run(sweep_dir, member) == runs_dir / "lora-tiny-stdlib_docs" / "v1"
    assert sw.state(sweep_dir).status == ("completed" if run_status == "completed" else "interrupted")


@pytest.mark.parametrize("writer_pid_alive, run_owned, member_status", [
    (True, False, "interrupted"),  # the pid lives on (another process now), but nobody holds the run
    (False, True, "running"),  # a live process still writes the run: never taken for dead
])
def test_a_members_status_asks_the_runs_lock_whether_it_still_trains(runs_dir, writer_pid_alive, run_owned,
                                                                      member_status):
    from peftlab import runs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid = os.getpid() if writer_pid_alive else dead.pid
    sweep_dir = _fake_sweep(runs_dir, {"status": "running", "pid": pid})
    run = runs.Run(runs_dir / "lora-tiny-stdlib_docs" / "v1")
    owner = run.own()  # how training holds its run (an flock on <run>/.owner)
    if not run_owned:
        owner.release()
    try:
        (member,) = _members(sweep_dir)
    finally:
        owner.release()
    assert member["status"] == member_status


def test_continue_refuses_a_sweep_that_is_still_running(runs_dir):
    import socket

    from peftlab import sweep as sw
    from peftlab.errors import UserError

    sweep_dir = _fake_sweep(runs_dir, None)
    data = json.loads((sweep_dir / "sweep.json").read_text())
    data.update(pid=os.getppid(), host=socket.gethostname())
    (sweep_dir / "sweep.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="still running"):
        sw.resume(str(sweep_dir))
    with pytest.raises(UserError, match="not a sweep folder"):
        sw.resume(str(runs_dir / "nope"))


def test_two_continues_of_one_sweep_cannot_both_launch(runs_dir):
    """The second is refused while the first holds the sweep, from its check to its end."""
    from peftlab.ownership import held

    sweep_dir = _fake_sweep(runs_dir, None)
    with held(sweep_dir, "sweep"):
        res = peftlab("sweep", "--continue", str(sweep_dir))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert f"sweep '{sweep_dir.resolve()}' is being written by process {os.getpid()}" in res.stderr
        assert not list(sweep_dir.glob("hydra*"))  # nothing launched


def test_members_to_check_takes_each_swept_value_once():
    from peftlab.sweep.planning import members_to_check

    members = [[f"a={a}", f"b={b}"] for a in (1, 2) for b in ("x", "y", "z")]
    # the first member, then each other value of a and of b with the other key as in the first member
    assert members_to_check(members, ["a", "b"]) == [
        ["a=1", "b=x"], ["a=2", "b=x"], ["a=1", "b=y"], ["a=1", "b=z"],
    ]
    assert members_to_check(members[:1], ["a", "b"]) == [["a=1", "b=x"]]


def test_a_member_that_cannot_resume_stays_interrupted_with_its_checkpoints(runs_dir):
    """Resuming fails before training (here: fp16 on a machine without a GPU): nothing is hidden or lost.

    A new run marked failed would become the member's newest: the interrupted run and its
    checkpoints would be passed over, and the next --continue would start from step 0.
    """
    res = peftlab("sweep", *BASE, "trainer.checkpoint_every=1", "trainer.keep_checkpoints=4", "--name", "a")
    assert res.returncode == 0, res.stdout + res.stderr
    (sweep_dir,) = _sweep_dirs(runs_dir)
    run = _member_run(sweep_dir, _members(sweep_dir)[0])
    as_if_stopped_early(run, checkpoints_kept=2, trainer={"precision": "fp16"})

    res = peftlab("sweep", "--continue", str(sweep_dir))
    assert res.returncode == 1 and "1 resume from a checkpoint" in res.stdout, res.stdout + res.stderr
    assert "could not resume" in res.stdout and "fp16" in res.stdout, res.stdout
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # no new run folder
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    assert len(list((run / "checkpoints").iterdir())) == 2
    assert _members(sweep_dir)[0]["status"] == "interrupted" and "continue it with" in res.stdout

    set_config(run, trainer={"precision": "fp32"})  # the cause gone, the same member resumes from its checkpoint
    res = peftlab("sweep", "--continue", str(sweep_dir))
    assert res.returncode == 0 and "1 resume from a checkpoint" in res.stdout, res.stdout + res.stderr
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["resumed_from"] == "step_0000002"
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]


def test_a_new_sweep_in_a_deleted_sweeps_place_does_not_adopt_its_runs(runs_dir):
    """Deleting a sweep folder (its runs kept) frees its version: the next sweep of that name gets it.

    Its members are named by the same path and index as the old runs; the sweep's id tells them apart.
    """
    from peftlab import sweep as sw
    from peftlab.sweep.folder import create

    res = peftlab("sweep", *BASE, "--name", "a")
    assert res.returncode == 0, res.stdout + res.stderr
    (old,) = _sweep_dirs(runs_dir)
    old_run = _member_run(old, _members(old)[0])
    assert json.loads((old_run / "meta.json").read_text())["sweep"]["id"] == json.loads((old / "sweep.json").read_text())["id"]
    shutil.rmtree(old)

    new = create(runs_dir, "a", {"members": [{"index": 0, "overrides": ["method=pissa"]}], "count": 1})
    assert new == old.resolve()  # the same name and version
    (member,) = sw.members(new)
    assert member.status == "pending" and member.run is None  # not the old LoRA run
    assert old_run.is_dir()  # which is still there, a run of its own

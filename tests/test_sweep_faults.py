"""A sweep under faults: its process killed or signalled while members train, then --continue.

Every test drives the real command line in subprocesses, on the tiny model, and
polls the run folders for progress. Each sweep gets its own process group,
killed in a ``finally`` (with whatever workers it left), so no test leaves a
process behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from peftlab.layout import OWNER_FILE
from tests.conftest import peftlab

# Checkpoints often; with QUICK_STEPS a member is still training when the test strikes.
TRAIN = ["model=tiny", "trainer.checkpoint_every=10", "trainer.keep_checkpoints=2", "trainer.eval_every=100",
         "trainer.log_every=5", "method.dropout=0.1"]
QUICK_STEPS = ["trainer.max_steps=150", "trainer.batch_size=8"]  # ~15 ms a step
# One thread per process: a resumed run and its uninterrupted reference then do the same float
# arithmetic whether they run in a worker or in the sweep's own process.
THREADS = {"OMP_NUM_THREADS": "1"}
TIMEOUT_S = 120


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


needs_joblib = pytest.mark.skipif(
    not _installed("hydra_plugins.hydra_joblib_launcher"),
    reason="hydra-joblib-launcher is not installed (pip install 'peftlab[sweep]')")


# --------------------------------------------------------------------------- processes


def _env(runs: Path) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "PEFTLAB_RUNS_DIR": str(runs), **THREADS}


def _start_sweep(runs: Path, log: Path, *args: str) -> subprocess.Popen:
    """`peftlab sweep ...` in its own process group; its output (and its workers') goes to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "peftlab", "sweep", *args], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=_env(runs))


def _cli(runs: Path, *args: str) -> subprocess.CompletedProcess:
    return peftlab(*args, env={"PEFTLAB_RUNS_DIR": str(runs), **THREADS}, timeout=300)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs (zombies aside)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no /proc: the kernel's word, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                in_group = os.getpgid(int(entry.name)) == pgid
            except ProcessLookupError:
                continue
            if in_group and _alive(int(entry.name)):
                return True
    return False


def _end_group(proc: subprocess.Popen) -> None:
    """Kill the sweep's process group (workers included) and make sure nothing of it lives on."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _wait_for(lambda: not _group_alive(proc.pid), 30, "the sweep's processes to end")


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``condition`` until it holds; fail after ``timeout`` s, or when ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        output = log.read_text() if log is not None and log.exists() else ""
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}:\n{output}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{output}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- folders


def _sweep_dir(runs: Path) -> Path:
    (found,) = [p.parent for p in (runs / "sweeps").glob("*/v*/sweep.json")]
    return found


def _run_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.glob("*/v*/meta.json"))


def _meta(run: Path) -> dict:
    try:
        return json.loads((run / "meta.json").read_text())
    except ValueError:  # being replaced
        return {}


def _checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))


def _checkpointed(runs: Path) -> list[Path]:
    return [r for r in _run_dirs(runs) if _checkpoints(r)]


def _members(sweep_dir: Path) -> list[dict]:
    """Each member as its run folders say (the newest run whose meta.json names the sweep and member)."""
    from peftlab import sweep as sw

    return [{"index": m.index, "overrides": m.overrides, "status": m.status,
             "run": str(m.run.path) if m.run is not None else None} for m in sw.members(sweep_dir)]


def _member_run(sweep_dir: Path, member: dict) -> Path:
    return Path(member["run"])


def _sweep_status(sweep_dir: Path) -> str:
    from peftlab import sweep as sw

    return sw.state(sweep_dir).status


# --------------------------------------------------------------------------- what a good end looks like


def _assert_stopped_cleanly(run: Path) -> None:
    """Interrupted (not left running), nobody writes it, and its last checkpoint is the step it stopped at."""
    meta = _meta(run)
    assert meta.get("status") == "interrupted", (run, meta)
    assert _owner(run) is None, f"{run} is still written by {_owner(run)}"
    assert _checkpoints(run), f"{run} stopped without a checkpoint"
    assert int(_checkpoints(run)[-1].name.removeprefix("step_")) == meta.get("step"), (run, meta)


def _owner(run: Path) -> dict | None:
    from peftlab import runs

    return runs.Run(run).owner()


def _assert_sweep_completed_once_each(runs: Path, sweep_dir: Path, n: int) -> None:
    """Every member completed, in exactly one run folder each, metrics logged once, checkpoints pruned."""
    members = _members(sweep_dir)
    assert [m["status"] for m in members] == ["completed"] * n, members
    assert sorted(_member_run(sweep_dir, m) for m in members) == _run_dirs(runs)
    for run in _run_dirs(runs):
        assert _meta(run)["status"] == "completed"
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        twice = [k for k, c in Counter((r["split"], r["step"]) for r in lines).items() if c > 1]
        assert not twice, f"{run}: metric lines written twice: {twice}"
        assert len(_checkpoints(run)) <= 2, _checkpoints(run)


def _adapters_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(a / "adapter" / "adapter.safetensors"), load_file(b / "adapter" / "adapter.safetensors")
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def _reference_runs(tmp_path: Path, members: list[list[str]]) -> dict[tuple[str, ...], Path]:
    """The given members trained without interruption (one sweep in one process): run folder by overrides."""
    runs = tmp_path / "reference"
    swept = [f"{key}={','.join(values)}" for key, values in _grid_of(members).items()]
    fixed = [o for o in members[0] if o.partition("=")[0] not in _grid_of(members)]
    res = _cli(runs, "sweep", *fixed, *swept)
    assert res.returncode == 0, res.stdout + res.stderr
    sweep_dir = _sweep_dir(runs)
    return {tuple(sorted(m["overrides"])): _member_run(sweep_dir, m) for m in _members(sweep_dir)}


def _grid_of(members: list[list[str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for member in members:
        for o in member:
            key, _, value = o.partition("=")
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    return {k: v for k, v in values.items() if len(v) > 1}


# --------------------------------------------------------------------------- the tests


def _fake_sweep_with_a_written_run(runs: Path) -> tuple[Path, Path]:
    """A stopped sweep whose one member's run is still marked running (its writer outlived the sweep)."""
    run = runs / "lora-tiny-stdlib_docs" / "v1"
    run.mkdir(parents=True)
    stamp = {"path": "sweeps/seed/v1", "name": "seed", "version": "v1", "member": 0}  # as train stamps a member
    (run / "meta.json").write_text(json.dumps({"status": "running", "host": socket.gethostname(), "pid": 1,
                                               "sweep": stamp}))
    sweep_dir = runs / "sweeps" / "seed" / "v1"
    sweep_dir.mkdir(parents=True)
    overrides = ["model=tiny", "trainer.max_steps=2", "seed=0"]
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "name": "seed", "version": "v1", "grid": ["seed=0"], "count": 1,
        "pid": 999_999_999, "host": socket.gethostname(), "hydra_overrides": [], "config_dirs": [],
        "members": [{"index": 0, "overrides": overrides}],
    }))
    return sweep_dir, run


def test_continue_refuses_while_a_live_process_still_writes_a_members_run(tmp_path):
    runs = tmp_path / "runs"
    sweep_dir, run = _fake_sweep_with_a_written_run(runs)
    # A process that owns the run the way training does (an flock held while it writes).
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from peftlab import runs; o = runs.Run(sys.argv[1]).own(); "
                               "print('owned', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "owned"
        def records():  # the sweep's files, but for its lock file (taken to check, then released)
            return {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file() and p.name != OWNER_FILE}

        before = records()
        res = _cli(runs, "sweep", "--continue", str(sweep_dir))
        assert res.returncode == 2, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
        assert str(run) in lines[0] and f"process {holder.pid}" in lines[0], lines[0]
        assert records() == before  # nothing written
        assert _run_dirs(runs) == [run] and not list(sweep_dir.glob("hydra*"))
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_worker_whose_sweep_died_starts_no_member_and_exits(tmp_path):
    runs = tmp_path / "runs"
    sweep_dir, _ = _fake_sweep_with_a_written_run(runs)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    before = sorted(p for p in runs.rglob("*"))
    # What a launcher's worker runs for a member whose sweep process (``dead``) is gone.
    code = ("import sys; from pathlib import Path; from peftlab.sweep.task import _Job, _run_in_worker; "
            "_run_in_worker(None, _Job(Path(sys.argv[1]), 0, None, int(sys.argv[2]))); print('started')")
    res = subprocess.run([sys.executable, "-c", code, str(sweep_dir), str(dead.pid)], capture_output=True,
                         text=True, timeout=60, env=_env(runs))
    assert res.returncode == 1 and "started" not in res.stdout, res.stdout + res.stderr
    assert sorted(p for p in runs.rglob("*")) == before


@pytest.mark.slow
@needs_joblib
def test_workers_stop_with_their_killed_sweep_and_continue_resumes_them_exactly(tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "sweep.log"
    proc = _start_sweep(runs, log, *TRAIN, *QUICK_STEPS, "method.rank=2,4,8", "--jobs", "2")
    try:
        _wait_for(lambda: len(_checkpointed(runs)) == 2, TIMEOUT_S, "two members to checkpoint", proc, log)
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process alone: its workers are orphaned
        proc.wait(timeout=30)
        sweep_dir = _sweep_dir(runs)
        workers = {_meta(r)["pid"] for r in _run_dirs(runs)}  # the processes that train the members' runs
        assert len(workers) == 2 and proc.pid not in workers
        _wait_for(lambda: all(_meta(r).get("status") not in (None, "running") for r in _run_dirs(runs)), 60,
                  "the orphaned members to end", log=log)
        started = _run_dirs(runs)
        assert len(started) == 2, f"a member started after its sweep died: {started}"
        # A worker marks its run interrupted, then exits and so releases the run's lock: wait for the exit
        # (slow on a loaded machine) before asking who still writes the run.
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 30, "the orphaned workers to exit", log=log)
        for run in started:
            _assert_stopped_cleanly(run)
        assert sorted(m["status"] for m in _members(sweep_dir)) == ["interrupted", "interrupted", "pending"]
        assert len(_run_dirs(runs)) == 2
    finally:
        _end_group(proc)

    res = _cli(runs, "sweep", "--continue", str(sweep_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 of 3 runs to go (0 completed, 2 resume from a checkpoint)" in res.stdout, res.stdout
    _assert_sweep_completed_once_each(runs, sweep_dir, 3)
    resumed = {tuple(sorted(m["overrides"])): _member_run(sweep_dir, m) for m in _members(sweep_dir)
               if _member_run(sweep_dir, m) in started}
    reference = _reference_runs(tmp_path, [list(k) for k in resumed])
    for overrides, run in resumed.items():
        assert _meta(run)["history"][-1]["status"] == "interrupted"  # it really was resumed
        assert _adapters_equal(run, reference[overrides]), f"{run} differs from an uninterrupted run"


def _sigterm_the_sweep(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGTERM)


def _ctrl_c_the_terminal(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: every process of the group


GRACEFUL = {
    # launcher, the members' settings and grid, members completed and members mid-run when the signal comes, the signal
    "basic-sigterm": ([], [*QUICK_STEPS, "method.rank=2,4"], 0, 1, _sigterm_the_sweep),
    "jobs2-sigterm": (["--jobs", "2"], [*QUICK_STEPS, "method.rank=2,4"], 0, 2, _sigterm_the_sweep),
    # The short member ends first, so one worker waits idle when the terminal's Ctrl-C arrives;
    # steps of a few tenths of a second, as with real models, so a stop takes a while.
    "jobs2-ctrl-c-idle-worker": (["--jobs", "2"], ["trainer.batch_size=256", "trainer.max_steps=2,30"], 1, 1,
                                 _ctrl_c_the_terminal),
}


@pytest.mark.slow
@needs_joblib
@pytest.mark.parametrize("case", list(GRACEFUL))
def test_a_signalled_sweep_checkpoints_its_members_and_continue_completes_it(tmp_path, case):
    launcher, grid, done, mid_run, strike = GRACEFUL[case]
    runs, log = tmp_path / "runs", tmp_path / "sweep.log"
    proc = _start_sweep(runs, log, *TRAIN, *grid, *launcher)
    try:
        _wait_for(lambda: _ready_to_strike(runs, done, mid_run), TIMEOUT_S, "members to checkpoint", proc, log)
        strike(proc)
        proc.wait(timeout=90)
        output = log.read_text()
        assert proc.returncode == 130, output
        assert "continue it with: peftlab sweep --continue" in output, output
        stopped = [r for r in _run_dirs(runs) if _meta(r).get("status") != "completed"]
        assert len(stopped) == mid_run, [(r, _meta(r).get("status")) for r in _run_dirs(runs)]
        for run in stopped:
            _assert_stopped_cleanly(run)
        sweep_dir = _sweep_dir(runs)
        assert _sweep_status(sweep_dir) == "interrupted"
    finally:
        _end_group(proc)

    res = _cli(runs, "sweep", "--continue", str(sweep_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{mid_run} resume from a checkpoint" in res.stdout, res.stdout
    _assert_sweep_completed_once_each(runs, sweep_dir, 2)


def _ready_to_strike(runs: Path, done: int, mid_run: int) -> bool:
    """``done`` members completed and ``mid_run`` training past a checkpoint."""
    folders = _run_dirs(runs)
    training = [r for r in folders if _meta(r).get("status") == "running" and _checkpoints(r)]
    completed = [r for r in folders if _meta(r).get("status") == "completed"]
    return len(training) == mid_run and len(completed) == done

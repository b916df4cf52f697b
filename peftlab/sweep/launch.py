"""Launching: a sweep's members through Hydra's configured sweeper and launcher; start and --continue.

SIGINT or SIGTERM of the sweep process stops the sweep gracefully. Members in
the sweep's own process (the basic launcher) stop at their next step boundary
through ``train``'s own handling. Members in other processes (a launcher's
workers) are asked to stop through the sweep folder (``members.request_stop``):
they checkpoint at their next step and record themselves interrupted, and the
sweep process waits for them, up to ``STOP_GRACE_S``, before it lets the
launcher shut its workers down (which may kill them). A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab import runs
from peftlab.errors import UserError
from peftlab.sweep.members import (
    LAUNCH_FILE,
    SWEEP_FILE,
    _lock_file,
    clear_stop,
    find_sweep,
    read,
    refresh,
    request_stop,
    run_path,
    running_elsewhere,
    written_runs,
)
from peftlab.sweep.planning import (
    OPTUNA,
    Plan,
    _hydra,
    _hydra_error,
    _key,
    _ours,
    _quote,
)
from peftlab.sweep.task import run_member

STOP_GRACE_S = 60.0  # how long a stopping sweep waits for members in other processes to checkpoint
_SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class _GracefulStop:
    """The sweep process's SIGINT/SIGTERM handler while members run (see the module docstring)."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.signalled = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signalled:
            raise KeyboardInterrupt()  # a second signal: stop now
        self.signalled = True
        try:
            request_stop(self.sweep_dir, _SIGNAL_NAMES.get(signum, f"signal {signum}"))
        except OSError:  # the disk may be what failed: the members then stop with the sweep process
            raise KeyboardInterrupt() from None
        _wait_for_members(self.sweep_dir, STOP_GRACE_S)
        raise KeyboardInterrupt()


def _wait_for_members(sweep_dir: Path, grace: float) -> None:
    """Wait until no other process runs a member of the sweep, at most ``grace`` seconds."""
    deadline = time.monotonic() + grace
    pending = running_elsewhere(sweep_dir)
    if pending:
        print(f"stopping: {len(pending)} running member(s) checkpoint at their next step "
              f"(waiting up to {grace:.0f}s; press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = running_elsewhere(sweep_dir)


@contextlib.contextmanager
def _signals_stop_gracefully(sweep_dir: Path) -> Iterator[None]:
    """SIGINT and SIGTERM stop the sweep like Ctrl-C, its members checkpointed and recorded (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _GracefulStop(sweep_dir)
    previous = {s: signal.signal(s, handler) for s in _SIGNAL_NAMES}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _launch_record(**fields: Any) -> dict:
    """launch.json: what the launch runs, and the process that launched it (its members watch it)."""
    return {**fields, "pid": os.getpid(), "host": socket.gethostname()}


def _no_idle_workers(hydra_overrides: list[str], count: int | None) -> list[str]:
    """At most one joblib worker per member: an idle one only costs memory, and a Ctrl-C kills it.

    A pool that loses a worker kills the others at once, mid-step; a worker that
    ran a member ignores signals afterwards (see ``task``), an idle one cannot.
    """
    given = [o.partition("=")[2] for o in hydra_overrides if _key(o) == "hydra.launcher.n_jobs"]
    try:
        n_jobs = int(given[-1]) if given else None
    except ValueError:  # an interpolation or the like: Hydra's business
        return hydra_overrides
    if count is None or n_jobs is None or not 0 < count < n_jobs:
        return hydra_overrides
    return [o for o in hydra_overrides if _key(o) != "hydra.launcher.n_jobs"] + [f"hydra.launcher.n_jobs={count}"]


def _next_hydra_dir(sweep_dir: Path) -> Path:
    if not (sweep_dir / "hydra").exists():
        return sweep_dir / "hydra"
    k = 2
    while (sweep_dir / f"hydra-{k}").exists():
        k += 1
    return sweep_dir / f"hydra-{k}"


def _launch_sweeper(hydra_dir: Path, task: list[str], hydra_overrides: list[str], config_dirs: list[str],
                    offset: int = 0, count: int | None = None) -> None:
    """Hydra's multirun: the configured sweeper expands ``task`` and drives the configured launcher."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, _launch_record(offset=offset))
    _quiet_optuna()
    hydra = _hydra(config_dirs)
    hydra_overrides = _no_idle_workers(hydra_overrides, count)
    overrides = hydra_overrides + _ours(hydra_overrides, hydra_dir) + task + ["hydra.mode=MULTIRUN"]
    try:
        hydra.multirun(config_name="config", task_function=run_member, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _hydra_error(exc, hydra, overrides, config_dirs) from None
    except ValueError as exc:
        # The Optuna sweeper asks for the best trial at the end; when every member
        # failed there is none. The failures are recorded members, not a crash.
        if "No trials are completed" not in str(exc):
            raise
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


def _quiet_optuna() -> None:
    """Optuna logs every study it creates; peftlab prints its own member lines."""
    import importlib.util

    if importlib.util.find_spec("optuna") is not None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _launch_jobs(hydra_dir: Path, jobs: list[dict], hydra_overrides: list[str], config_dirs: list[str]) -> None:
    """Run given members (override lists) with the sweep's Hydra launcher, without its sweeper."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    hydra_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, _launch_record(jobs=jobs))
    hydra = _hydra(config_dirs)
    hydra_overrides = _no_idle_workers(hydra_overrides, len(jobs))
    overrides = hydra_overrides + _ours(hydra_overrides, hydra_dir) + ["hydra.mode=MULTIRUN"]
    try:
        cfg = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN,
                                   with_log_configuration=True)
        callbacks = Callbacks(cfg)
        callbacks.on_multirun_start(config=cfg, config_name="config")
        context = HydraContext(config_loader=hydra.config_loader, callbacks=callbacks)
        launcher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=context, task_function=run_member)
        batch = [list(j["overrides"]) + ([j["resume"]] if j.get("resume") else []) for j in jobs]
        results = launcher.launch(batch, initial_job_idx=0)
        callbacks.on_multirun_end(config=cfg, config_name="config")
    except (HydraException, OmegaConfBaseException) as exc:
        raise _hydra_error(exc, hydra, overrides, config_dirs) from None
    finally:
        GlobalHydra.instance().clear()
    for r in results:
        _ = r.return_value  # a job that crashed outside the task function raises here


@dataclass
class Outcome:
    sweep_dir: Path
    data: dict
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.data.get("counts") or {})


def start(p: Plan, argv: Sequence[str], announce: Any = print) -> Outcome:
    """Create the sweep folder, print what it will do, and run it."""
    run = runs.allocate(p.runs_root / "sweeps", p.name)
    sweep_dir = run.path.resolve()
    data = {
        "name": p.name,
        "version": run.version,
        "grid": p.grid,
        "members": [
            {"index": i, "overrides": m, "run": None, "status": "pending"} for i, m in enumerate(p.members or [])
        ],
        "overrides": p.overrides,
        "hydra_overrides": p.hydra_overrides + p.extra,
        "config_dirs": [str(Path(d).resolve()) for d in p.config_dirs],
        "sweeper": p.sweeper,
        "launcher": p.launcher,
        "count": p.count,
        "swept": [k for k, _ in p.dims],
        "metric": p.metric,
        "direction": p.direction,
        "argv": list(argv),
        "created_at": runs.now_iso(),
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
    announce(f"sweep {p.name}/{run.version}: {p.describe()}")
    return _run(sweep_dir, lambda: _launch_sweeper(_next_hydra_dir(sweep_dir), p.overrides,
                                                   p.hydra_overrides + p.extra, p.config_dirs, count=p.count))


def _run(sweep_dir: Path, launch: Any) -> Outcome:
    interrupted = False
    ok = False
    try:
        with _signals_stop_gracefully(sweep_dir):
            launch()
        ok = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        data = refresh(sweep_dir, assume_dead=not ok)
        counts = data.get("counts") or {}
        done = bool(data.get("members")) and counts.get("completed", 0) == len(data["members"])
        if data.get("sweeper") == OPTUNA and len(data.get("members") or []) < int(data.get("count") or 0):
            done = False
        data["status"] = "interrupted" if interrupted else ("completed" if done else ("failed" if ok else "crashed"))
        data["ended_at"] = runs.now_iso()
        _mark_sweep(sweep_dir, status=data["status"], ended_at=data["ended_at"])
    return Outcome(sweep_dir, data, interrupted)


def resume(spec: str, *, jobs: int | None = None, hydra_overrides: Sequence[str] = (),
           announce: Any = print) -> Outcome:
    """``--continue``: run the members of a sweep that did not complete."""
    sweep_dir = find_sweep(spec).resolve()
    data = read(sweep_dir)
    if not isinstance(data.get("members"), list):
        raise UserError(f"'{sweep_dir / SWEEP_FILE}' is damaged (no members list): start the sweep again")
    _refuse_if_running(sweep_dir, data)
    hydra_ovr = _continue_overrides(list(data.get("hydra_overrides") or []), jobs, hydra_overrides)
    config_dirs = list(data.get("config_dirs") or [])

    data = refresh(sweep_dir, assume_dead=True)
    members = data["members"]
    todo = [_job_to_continue(sweep_dir, m) for m in members if m.get("status") != "completed"]
    count = int(data.get("count") or len(members))
    missing_trials = max(0, count - len(members)) if data.get("sweeper") == OPTUNA else 0
    name = f"{data.get('name')}/{data.get('version')}"
    if not todo and not missing_trials:
        announce(f"sweep {name}: all {len(members)} runs completed; nothing to continue")
        return Outcome(sweep_dir, _mark_sweep(sweep_dir, status="completed"))
    completed = sum(1 for m in members if m.get("status") == "completed")
    resumed = sum(1 for j in todo if j.get("resume"))
    what = f"{len(todo) + missing_trials} of {count} runs to go ({completed} completed"
    what += f", {resumed} resume from a checkpoint)" if resumed else ")"
    announce(f"sweep {name}: continuing, {what}")
    clear_stop(sweep_dir)  # a stop asked of an earlier launch does not stop this one
    _mark_sweep(sweep_dir, status="running", pid=os.getpid(), host=socket.gethostname(), ended_at=None,
                hydra_overrides=hydra_ovr)

    def launch() -> None:
        if todo:
            # The remaining members run through the launcher alone: the sweeper already chose them.
            plain = [o for o in hydra_ovr if not _key(o).startswith("hydra/sweeper") and not _key(o).startswith("hydra.sweeper")]
            _launch_jobs(_next_hydra_dir(sweep_dir), todo, plain, config_dirs)
        if missing_trials:
            task = list(data.get("overrides") or [])
            more = [o for o in hydra_ovr if _key(o) != "hydra.sweeper.n_trials"] + [f"hydra.sweeper.n_trials={missing_trials}"]
            _launch_sweeper(_next_hydra_dir(sweep_dir), task, more, config_dirs, offset=len(members),
                            count=missing_trials)

    return _run(sweep_dir, launch)


def _refuse_if_running(sweep_dir: Path, data: dict) -> None:
    """--continue only once nothing of the sweep runs any more: no two processes may write one run."""
    if data.get("status") == "running" and data.get("host") == socket.gethostname() \
            and runs.pid_alive(data.get("pid")) and data.get("pid") != os.getpid():
        raise UserError(
            f"sweep {sweep_dir} is still running (pid {data.get('pid')}): wait for it, or stop it before --continue"
        )
    # The sweep process may be gone while a worker it started still trains (it stops at its
    # next step boundary); the run's flock says so exactly.
    for index, folder, owner in written_runs(sweep_dir):
        pid = owner.get("pid", "?")
        where = f" on {owner['host']}" if owner.get("host") and owner["host"] != socket.gethostname() else ""
        raise runs.RunBusy(
            f"run '{folder}' (member {index + 1} of sweep {sweep_dir}) is still being written by process {pid}{where}: "
            f"wait for it to end, or stop it (kill {pid}), before --continue"
        )


def _continue_overrides(stored: list[str], jobs: int | None, given: Sequence[str]) -> list[str]:
    """The Hydra overrides of a --continue: the stored ones, with what was given now taking their place."""
    extra = [str(o) for o in given]
    for o in extra:
        if _key(o) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise UserError(f"'{o}' is not allowed: peftlab sweep keeps Hydra's output inside the sweep folder")
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
        extra = [o for o in extra if _key(o) != "hydra/launcher"] + ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    keys = {_key(o) for o in extra}
    for group in ("launcher", "sweeper"):
        if f"hydra/{group}" in keys:  # another plugin: the stored one's settings do not apply to it
            stored = [o for o in stored if _key(o) != f"hydra/{group}" and not _key(o).startswith(f"hydra.{group}.")]
    return [o for o in stored if _key(o) not in keys] + extra


def _job_to_continue(sweep_dir: Path, member: dict) -> dict[str, Any]:
    """A member to run again: resumed from its run's checkpoint when it was interrupted after one."""
    job: dict[str, Any] = {"index": int(member["index"]), "overrides": list(member.get("overrides") or [])}
    folder = run_path(sweep_dir, member.get("run"))
    if member.get("status") == "interrupted" and folder is not None and not any(_key(o) == "resume" for o in job["overrides"]):
        if any(not c.name.endswith(".tmp") for c in (folder / "checkpoints").glob("step_*")):
            job["resume"] = f"resume={_quote(str(folder.resolve()))}"
    return job


def _mark_sweep(sweep_dir: Path, **fields: Any) -> dict:
    """Update sweep.json's own fields (under its lock); returns it."""
    with _lock_file(sweep_dir):
        current = read(sweep_dir)
        current.update(fields)
        runs.atomic_write_json(sweep_dir / SWEEP_FILE, current)
    return current

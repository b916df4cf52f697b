"""Launching: a sweep's members through Hydra's configured sweeper and launcher; start and --continue.

SIGINT or SIGTERM of the sweep process stops the sweep gracefully. Members in
the sweep's own process (the basic launcher) stop at their next step boundary
through ``train``'s own handling. Members in other processes (a launcher's
workers) are asked to stop through the sweep folder (``folder.request_stop``):
they checkpoint at their next step and mark their runs interrupted, and the
sweep process waits for them, up to ``STOP_GRACE_S``, before it lets the
launcher shut its workers down (which may kill them). A second signal stops at once.
"""

from __future__ import annotations

import contextlib
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
from peftlab.layout import SWEEP_FILE
from peftlab.ownership import held
from peftlab.sweep import status
from peftlab.sweep.folder import (
    clear_stop,
    create,
    find_sweep,
    latest_launch,
    live_launcher,
    next_hydra_dir,
    read,
    request_stop,
    write_launch,
)
from peftlab.sweep.planning import OPTUNA, Plan, hydra_error, key_of, new_hydra, our_hydra_settings, quote
from peftlab.sweep.task import run_member

STOP_GRACE_S = 60.0  # how long a stopping sweep waits for members in other processes to checkpoint
POLL_S = 0.2  # how often it looks whether they have
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
    pending = status.running_elsewhere(sweep_dir)
    if pending:
        print(f"stopping: {len(pending)} running member(s) checkpoint at their next step "
              f"(waiting up to {grace:.0f}s; press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
    while pending and time.monotonic() < deadline:
        time.sleep(POLL_S)
        pending = status.running_elsewhere(sweep_dir)


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


def _no_idle_workers(hydra_overrides: list[str], count: int | None) -> list[str]:
    """At most one joblib worker per member: an idle one only costs memory, and a Ctrl-C kills it.

    A pool that loses a worker kills the others at once, mid-step; a worker that
    ran a member ignores signals afterwards (see ``task``), an idle one cannot.
    """
    given = [o.partition("=")[2] for o in hydra_overrides if key_of(o) == "hydra.launcher.n_jobs"]
    try:
        n_jobs = int(given[-1]) if given else None
    except ValueError:  # an interpolation or the like: Hydra's business
        return hydra_overrides
    if count is None or n_jobs is None or not 0 < count < n_jobs:
        return hydra_overrides
    return [o for o in hydra_overrides if key_of(o) != "hydra.launcher.n_jobs"] + [f"hydra.launcher.n_jobs={count}"]


def _launch_sweeper(hydra_dir: Path, task: list[str], hydra_overrides: list[str], config_dirs: list[str],
                    stored: list[str], offset: int = 0, count: int | None = None) -> None:
    """Hydra's multirun: the configured sweeper expands ``task`` and drives the configured launcher.

    ``stored``: the sweep's Hydra overrides as a later --continue starts from them (recorded in launch.json).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    write_launch(hydra_dir, offset=offset, hydra_overrides=stored)
    _quiet_optuna()
    hydra = new_hydra(config_dirs)
    hydra_overrides = _no_idle_workers(hydra_overrides, count)
    overrides = hydra_overrides + our_hydra_settings(hydra_overrides, hydra_dir) + task + ["hydra.mode=MULTIRUN"]
    try:
        hydra.multirun(config_name="config", task_function=run_member, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise hydra_error(exc, hydra, overrides, config_dirs) from None
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


def _launch_jobs(hydra_dir: Path, jobs: list[dict], hydra_overrides: list[str], config_dirs: list[str],
                 stored: list[str]) -> None:
    """Run given members (override lists) with the sweep's Hydra launcher, without its sweeper (``stored``: as above)."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    write_launch(hydra_dir, jobs=jobs, hydra_overrides=stored)
    hydra = new_hydra(config_dirs)
    hydra_overrides = _no_idle_workers(hydra_overrides, len(jobs))
    overrides = hydra_overrides + our_hydra_settings(hydra_overrides, hydra_dir) + ["hydra.mode=MULTIRUN"]
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
        raise hydra_error(exc, hydra, overrides, config_dirs) from None
    finally:
        GlobalHydra.instance().clear()
    for r in results:
        _ = r.return_value  # a job that crashed outside the task function raises here


@dataclass
class Outcome:
    """How a launch left the sweep: its state as the run folders say, and whether a signal stopped it."""

    state: status.SweepState
    interrupted: bool = False


def start(p: Plan, argv: Sequence[str], announce: Any = print, on_created: Any = None) -> Outcome:
    """Create the sweep folder (sweep.json, written once), print what it will do, and run it.

    ``on_created(sweep_dir)`` runs once the folder exists, before any member starts."""
    sweep_dir = create(p.runs_root, p.name, {
        "grid": p.grid,
        "members": [{"index": i, "overrides": m} for i, m in enumerate(p.members or [])],
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
    })
    if on_created is not None:
        on_created(sweep_dir)
    announce(f"sweep {p.name}/{sweep_dir.name}: {p.describe()}")
    hydra_overrides = p.hydra_overrides + p.extra
    with held(sweep_dir, "sweep"):
        return _run(sweep_dir, lambda: _launch_sweeper(next_hydra_dir(sweep_dir), p.overrides, hydra_overrides,
                                                       p.config_dirs, hydra_overrides, count=p.count))


def start_members(root: Path, name: str, members: list[list[str]], *, hydra_overrides: list[str],
                  config_dirs: list[str], launcher: str, metric: str, argv: Sequence[str], announce: Any = print,
                  on_created: Any = None, jobs: int | None = None) -> Outcome:
    """A sweep of given members rather than a grid (e.g. each configuration at its own chosen setting).

    ``on_created(sweep_dir)`` runs once the folder exists, before any member starts.
    ``jobs``: run them with the joblib launcher, N at a time, whatever ``hydra_overrides`` chose.
    ``--continue`` and ``--status`` treat it as any other sweep.
    """
    swept = sorted({key_of(o) for m in members for o in m if sum(o in x for x in members) < len(members)})
    hydra_overrides = [o for o in _continue_overrides(hydra_overrides, jobs, [])
                       if not key_of(o).startswith(("hydra/sweeper", "hydra.sweeper"))]
    launcher = "joblib" if jobs is not None else launcher
    sweep_dir = create(root, name, {
        "grid": None,
        "members": [{"index": i, "overrides": m} for i, m in enumerate(members)],
        "overrides": [],
        "hydra_overrides": hydra_overrides,
        "config_dirs": [str(Path(d).resolve()) for d in config_dirs],
        "sweeper": "given members",
        "launcher": launcher,
        "count": len(members),
        "swept": swept,
        "metric": metric,
        "direction": None,
        "argv": list(argv),
    })
    if on_created is not None:
        on_created(sweep_dir)
    announce(f"sweep {name}/{sweep_dir.name}: {len(members)} run{'' if len(members) == 1 else 's'}")
    jobs = [{"index": i, "overrides": m} for i, m in enumerate(members)]
    with held(sweep_dir, "sweep"):
        return _run(sweep_dir, lambda: _launch_jobs(next_hydra_dir(sweep_dir), jobs, hydra_overrides,
                                                    list(config_dirs), hydra_overrides))


def _run(sweep_dir: Path, launch: Any) -> Outcome:
    interrupted = False
    try:
        with _signals_stop_gracefully(sweep_dir):
            launch()
    except KeyboardInterrupt:
        interrupted = True
    found = status.state(sweep_dir)
    if interrupted and found.status != "running":
        found.status = "interrupted"
    return Outcome(found, interrupted)


def resume(spec: str, *, jobs: int | None = None, hydra_overrides: Sequence[str] = (),
           runs_dir: str | Path | None = None, announce: Any = print, rerun_failed: bool = True) -> Outcome:
    """``--continue``: run the members of a sweep that did not complete (not the failed ones when
    ``rerun_failed`` is false: a study keeps a diverged setting as a result)."""
    sweep_dir = find_sweep(spec, runs_dir).resolve()
    data = read(sweep_dir)
    if not isinstance(data.get("members"), list):
        raise UserError(f"'{sweep_dir / SWEEP_FILE}' is damaged (no members list): start the sweep again")
    # Held from the check to the end: two --continue at once would otherwise both pass the check
    # and start the same pending members twice.
    with held(sweep_dir, "sweep"):
        return _resume_held(sweep_dir, data, jobs, hydra_overrides, announce, rerun_failed)


def _resume_held(sweep_dir: Path, data: dict, jobs: int | None, hydra_overrides: Sequence[str], announce: Any,
                 rerun_failed: bool) -> Outcome:
    _refuse_if_running(sweep_dir)
    stored = latest_launch(sweep_dir).get("hydra_overrides", data.get("hydra_overrides"))
    hydra_ovr = _continue_overrides(list(stored or []), jobs, hydra_overrides)
    config_dirs = list(data.get("config_dirs") or [])
    members = status.members(sweep_dir, data)
    todo = jobs_to_continue(members, rerun_failed)
    count = int(data.get("count") or len(members))
    missing_trials = max(0, count - len(members)) if data.get("sweeper") == OPTUNA else 0
    name = f"{data.get('name')}/{data.get('version')}"
    if not todo and not missing_trials:
        done = f"all {len(members)} runs completed" if rerun_failed else "every run finished"
        announce(f"sweep {name}: {done}; nothing to continue")
        return Outcome(status.state(sweep_dir))
    announce(f"sweep {name}: continuing, {_to_go(members, todo, missing_trials, count)}")
    clear_stop(sweep_dir)  # a stop asked of an earlier launch does not stop this one

    def launch() -> None:
        if todo:
            # The remaining members run through the launcher alone: the sweeper already chose them.
            plain = [o for o in hydra_ovr if not key_of(o).startswith(("hydra/sweeper", "hydra.sweeper"))]
            _launch_jobs(next_hydra_dir(sweep_dir), todo, plain, config_dirs, hydra_ovr)
        if missing_trials:
            task = list(data.get("overrides") or [])
            more = [o for o in hydra_ovr if key_of(o) != "hydra.sweeper.n_trials"]
            # new trials take indices after every member seen (one killed before its run folder left a gap)
            offset = members[-1].index + 1 if members else 0
            _launch_sweeper(next_hydra_dir(sweep_dir), task, more + [f"hydra.sweeper.n_trials={missing_trials}"],
                            config_dirs, hydra_ovr, offset=offset, count=missing_trials)

    return _run(sweep_dir, launch)


def _to_go(members: list[status.Member], todo: list[dict], missing_trials: int, count: int) -> str:
    """``"2 of 4 runs to go (2 completed, 1 resume from a checkpoint)"``."""
    completed = sum(1 for m in members if m.status == "completed")
    resumed = sum(1 for j in todo if j.get("resume"))
    what = f"{len(todo) + missing_trials} of {count} runs to go ({completed} completed"
    return what + (f", {resumed} resume from a checkpoint)" if resumed else ")")


def _refuse_if_running(sweep_dir: Path) -> None:
    """--continue only once nothing of the sweep runs any more: no two processes may write one run."""
    pid = live_launcher(sweep_dir)
    if pid is not None:
        raise UserError(f"sweep {sweep_dir} is still running (pid {pid}): wait for it, or stop it before --continue")
    # The sweep process may be gone while a worker it started still trains (it stops at its
    # next step boundary); the run's flock says so exactly.
    for run, owner in status.written_runs(sweep_dir):
        pid = owner.get("pid", "?")
        where = f" on {owner['host']}" if owner.get("host") and owner["host"] != socket.gethostname() else ""
        member = (run.sweep or {}).get("member")
        raise runs.RunBusy(
            f"run '{run.path}' (member #{member} of sweep {sweep_dir}) is still being written by process {pid}{where}: "
            f"wait for it to end, or stop it (kill {pid}), before --continue"
        )


def _continue_overrides(stored: list[str], jobs: int | None, given: Sequence[str]) -> list[str]:
    """The Hydra overrides of a --continue: the stored ones, with what was given now taking their place."""
    extra = [str(o) for o in given]
    for o in extra:
        if key_of(o) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise UserError(f"'{o}' is not allowed: peftlab sweep keeps Hydra's output inside the sweep folder")
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
        extra = [o for o in extra if key_of(o) != "hydra/launcher"] + ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    keys = {key_of(o) for o in extra}
    for group in ("launcher", "sweeper"):
        if f"hydra/{group}" in keys:  # another plugin: the stored one's settings do not apply to it
            stored = [o for o in stored if key_of(o) != f"hydra/{group}" and not key_of(o).startswith(f"hydra.{group}.")]
    return [o for o in stored if key_of(o) not in keys] + extra


def jobs_to_continue(members: Sequence[status.Member], rerun_failed: bool = True) -> list[dict[str, Any]]:
    """The members to run again (every one whose newest run did not complete), as launch jobs.

    An interrupted member resumes from its run's newest checkpoint (``resume=``), and so does
    one that failed on storage (a full disk); the others (failed, interrupted before a
    checkpoint, never started) start again. Without ``rerun_failed``, a failed member is
    kept as a result unless it failed on storage.
    """
    jobs = []
    for member in members:
        if member.status == "completed" or (member.status == "failed" and not rerun_failed and not member.retryable):
            continue
        job: dict[str, Any] = {"index": member.index, "overrides": list(member.overrides)}
        run, typed_resume = member.run, any(key_of(o) == "resume" for o in member.overrides)
        # "running" here is a run on another host, which no lock of ours can tell about: as before a kill
        resumable = member.status in ("interrupted", "running") or member.retryable
        if resumable and run is not None and run.checkpoints() and not typed_resume:
            job["resume"] = f"resume={quote(str(run.path.resolve()))}"
        jobs.append(job)
    return jobs

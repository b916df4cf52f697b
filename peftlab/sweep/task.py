"""The member task: the function Hydra's launchers run once per sweep member.

``run_member`` stays a module-level function of an importable module: joblib and
submitit pickle it by reference (``peftlab.sweep.task.run_member``).

A member that runs in a process other than the sweep's own (a joblib worker, a
submitit job) is tied to the sweep process that launched it: it does not start
when that process is gone or stopping; while it trains, that process's death or
its stop request (``folder.request_stop``) stops it at the next step boundary,
checkpointed and marked interrupted; and a worker whose sweep died exits once
its member ended, so it takes no further member from the launcher's queue.
There an interrupt is recorded, not raised: raised into a process pool it would
make the pool kill the other workers mid-step.

What a member did is recorded in its run folder alone: ``train`` stamps the new
folder's meta.json with the sweep and the member index, and a member that fails
before training made its folder (a bad value in its config) still gets one,
marked failed with the error, so the sweep's status and ``--continue`` find it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab import runs, stopping
from peftlab.errors import StorageError, UserError
from peftlab.layout import SWEEP_FILE
from peftlab.metrics import selected_validation
from peftlab.sweep.folder import read, read_launch, runs_root_of, stamp, stop_requested
from peftlab.sweep.planning import key_of

WATCH_INTERVAL_S = 0.5  # how often a member in a worker looks at its sweep process
SWEEP_ENDED = "the sweep that started this run has ended"
SWEEP_STOPPING = "the sweep is stopping"


@dataclass(frozen=True)
class _Job:
    """One launched job: which member it is, and the sweep process that launched it."""

    sweep_dir: Path
    index: int
    resume: str | None  # the resume= override the launching process added, if any
    launcher: int | None  # pid of that process, when it runs on this host


def _sweep_dir_of(hydra_dir: Path) -> Path:
    """The sweep folder of a launch: Hydra's sweep dir is always a folder of it (see ``our_hydra_settings``)."""
    if not (hydra_dir.parent / SWEEP_FILE).is_file():
        raise RuntimeError(f"no {SWEEP_FILE} beside Hydra's sweep dir {hydra_dir}")
    return hydra_dir.parent


def _index_of(launch: dict, job_num: int) -> tuple[int, str | None]:
    """(member index, the resume= override the parent added) of job ``job_num`` of a launch."""
    jobs = launch.get("jobs")
    if isinstance(jobs, list) and 0 <= job_num < len(jobs):
        job = jobs[job_num]
        return int(job["index"]), job.get("resume")
    return int(launch.get("offset", 0)) + job_num, None


def _launcher_pid(launch: dict) -> int | None:
    """The pid of the sweep process that launched this job, or None when it runs on another host.

    Each launch records its own process, so a worker left over from an earlier
    launch never takes a later ``--continue`` for its sweep.
    """
    if launch.get("host") != socket.gethostname():
        return None
    try:
        return int(launch["pid"])
    except (KeyError, TypeError, ValueError):
        return None


def _job_of(hc: Any) -> _Job:
    hydra_dir = Path(str(hc.sweep.dir))
    sweep_dir = _sweep_dir_of(hydra_dir)
    launch = read_launch(hydra_dir)
    index, resume = _index_of(launch, int(hc.job.num))
    return _Job(sweep_dir, index, resume, _launcher_pid(launch))


def run_member(cfg: Any) -> float | None:
    """Hydra's task function for one sweep member: train it into a run folder stamped with the sweep.

    Returns the member's validation metric (the objective of search sweepers), or
    None when it failed. A member's failure is recorded in its run folder, never
    raised, so the sweep goes on. An interrupt leaves the run interrupted; in the
    sweep's own process it is raised, so the sweep stops; in another process see
    ``_run_in_worker``.
    """
    from hydra.core.hydra_config import HydraConfig

    job = _job_of(HydraConfig.get())
    if job.launcher is None or job.launcher == os.getpid():
        return _train_member(cfg, job)
    return _run_in_worker(cfg, job)


# --------------------------------------------------------------------------- members in other processes


def _run_in_worker(cfg: Any, job: _Job) -> float | None:
    """A member in a launcher's worker process, tied to the sweep process that launched it."""
    assert job.launcher is not None
    _ignore_signals_between_members()
    if _sweep_gone(job.launcher):
        _exit_worker()  # never start a member for a dead sweep, nor take the next one from the queue
    if stop_requested(job.sweep_dir):
        return None  # the sweep is stopping: the member stays pending, for --continue
    try:
        with _stops_with_sweep(job):
            return _train_member(cfg, job)
    except KeyboardInterrupt:
        return None  # recorded as interrupted; the sweep process decides whether the others stop
    finally:
        if _sweep_gone(job.launcher):
            _exit_worker()


def _sweep_gone(pid: int) -> bool:
    """Whether the sweep process ``pid`` has died (a dead parent re-parents this process)."""
    if os.getppid() == pid:
        return False
    return runs.pid_alive(pid) is False


def _exit_worker() -> None:
    """End this worker now: its sweep is gone, so nothing it would run next belongs to a live sweep."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the terminal may have gone with the sweep
            pass
    os._exit(1)


def _ignore_signals_between_members() -> None:
    """In a worker, SIGINT and SIGTERM outside training are left to the sweep process.

    Ctrl-C reaches every process of the terminal's group: a worker waiting for
    its next member would die of it, and a process pool that loses a worker kills
    the others at once, mid-step. The sweep process stops the members instead
    (see ``launch``); while a member trains, ``train`` still turns a signal into
    a stop at the next step boundary, and restores this afterwards.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def _stops_with_sweep(job: _Job) -> Iterator[None]:
    """While the member trains, its sweep process's death or stop request stops it at the next step."""
    assert job.launcher is not None
    launcher = job.launcher
    watches = [stopping.watch(lambda: stop_requested(job.sweep_dir), SWEEP_STOPPING, WATCH_INTERVAL_S)]
    if os.getppid() == launcher:
        watches.append(stopping.stop_with_parent(launcher, WATCH_INTERVAL_S))
    else:
        # Some launchers start members through a process of their own (submitit's
        # local controller), which outlives the sweep: the sweep's pid tells then.
        watches.append(stopping.watch(lambda: runs.pid_alive(launcher) is False, SWEEP_ENDED, WATCH_INTERVAL_S))
    try:
        yield
    finally:
        for done in watches:
            done.set()  # a later member of this worker starts with no watch of this one


# --------------------------------------------------------------------------- training one member


def _train_member(cfg: Any, job: _Job) -> float | None:
    """Train the member; however it ends, its run folder says so (see ``_record_failure``)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task) if str(o) != job.resume]
    sweep = read(job.sweep_dir)
    made: list[runs.Run] = []  # the run folder, once train has made (or reopened) it
    value, status, error, failure = None, "failed", None, "crash"
    try:
        _prepare(cfg, job)
        run = _train(cfg, hc, job, sweep, overrides, made.append)
        value, status = _objective(run, cfg), run.status
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except UserError as exc:
        error, failure = str(exc), "storage" if isinstance(exc, StorageError) else "invalid"
    except Exception as exc:  # noqa: BLE001 - a bug in one member must not stop the others
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if error is not None and not made:
            if job.resume:
                # The run to resume exists and is still what it was (interrupted, its checkpoints
                # kept): a new run marked failed would hide it, and the next --continue would
                # start the member from step 0. It stays interrupted; the error is told here.
                status = "could not resume"
            else:
                _record_failure(cfg, hc, job, sweep, overrides, error, failure)
        _say_member(sweep, job.index, overrides, status, value, error)
    return value


def _prepare(cfg: Any, job: _Job) -> None:
    """Validate the member's config; its run goes into the runs folder that holds the sweep.

    The sweep was created where ``runs_dir`` pointed, so that folder is what it
    said. A ``runs_dir=`` among the stored overrides is not read again: in a run
    store moved or copied since (or a launcher starting jobs in another working
    directory), it would send the runs away from their sweep.
    """
    from omegaconf import OmegaConf

    from peftlab.config import validate

    validate(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.runs_dir = str(runs_root_of(job.sweep_dir))
    OmegaConf.set_struct(cfg, True)


def _choices(hc: Any) -> dict[str, str]:
    from peftlab.config import GROUPS

    return {str(k): str(v) for k, v in hc.runtime.choices.items() if k in GROUPS and isinstance(v, str)}


def _train(cfg: Any, hc: Any, job: _Job, sweep: dict, overrides: list[str], on_run: Any) -> runs.Run:
    from peftlab.train import train

    argv = list(sweep.get("argv") or ["peftlab", "sweep"])
    member = stamp(job.sweep_dir, Path(str(cfg.runs_dir)), sweep, job.index)
    return train(cfg, overrides=overrides, argv=argv, choices=_choices(hc), show_progress=False, on_run=on_run,
                 stamp=member)


def _record_failure(cfg: Any, hc: Any, job: _Job, sweep: dict, overrides: list[str], error: str,
                    failure: str) -> None:
    """A new member that failed before training made its folder gets one, marked failed with the error
    (and the kind of ``failure``, see ``runs.FAILURES``).

    So the run folders alone tell how every member ended. Best effort: when even
    this cannot be written (a full disk), the member stays pending.
    """
    root = runs_root_of(job.sweep_dir)
    try:
        run = _allocate_named(root, cfg, _choices(hc))
        with run.own():
            meta = runs.new_meta(list(sweep.get("argv") or ["peftlab", "sweep"]), _seed(cfg))
            run.write_meta(**meta, choices=_choices(hc), **stamp(job.sweep_dir, root, sweep, job.index))
            run.write_config(_config_yaml(cfg), overrides)
            run.set_status("failed", error=error, failure=failure)
    except (OSError, UserError) as exc:
        print(f"warning: member {job.index} failed and could not be recorded: {exc}", file=sys.stderr)


def _allocate_named(root: Path, cfg: Any, choices: dict[str, str]) -> runs.Run:
    """A run folder named as training would name it; by the default name when ``name=`` is what is wrong."""
    from peftlab.naming import default_name, run_name

    try:
        return runs.allocate(root, run_name(cfg, choices))
    except UserError:
        return runs.allocate(root, default_name(choices))


def _config_yaml(cfg: Any) -> str:
    """The config as YAML, resolved when it can be (a bad value may be what stops it)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - any interpolation or missing value: keep it as written
        return OmegaConf.to_yaml(cfg, resolve=False)


def _seed(cfg: Any) -> Any:
    try:
        return int(cfg.seed)
    except Exception:  # noqa: BLE001 - the seed itself may be what is wrong
        return None


def _objective(run: runs.Run, cfg: Any) -> float | None:
    """The validation value of the checkpoint the member kept (what search sweepers optimise)."""
    summary = run.summary
    return selected_validation(summary, str(summary.get("metric") or cfg.trainer.metric))


def _say_member(sweep: dict, index: int, overrides: list[str], status: str, value: float | None,
                error: str | None) -> None:
    swept = set(sweep.get("swept") or [])
    shown = [o for o in overrides if key_of(o) in swept] or overrides
    total = sweep.get("count") or len(sweep.get("members") or [])
    line = f"[{index + 1}/{total}] {status}: {' '.join(shown)}"
    if value is not None:
        line += f"  best val {sweep.get('metric', 'metric')} {value:.4f}"
    if error:
        line += f"  ({error})"
    try:
        print(line, flush=True)
    except OSError:  # the terminal went away with the sweep; the run folder is what counts
        pass

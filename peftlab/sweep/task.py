"""The member task: the function Hydra's launchers run once per sweep member.

``run_member`` stays a module-level function of an importable module: joblib and
submitit pickle it by reference (``peftlab.sweep.task.run_member``).

A member that runs in a process other than the sweep's own (a joblib worker, a
submitit job) is tied to the sweep process that launched it: it does not start
when that process is gone or stopping; while it trains, that process's death or
its stop request (``members.request_stop``) stops it at the next step boundary,
checkpointed and marked interrupted; and a worker whose sweep died exits once
its member is recorded, so it takes no further member from the launcher's queue.
There an interrupt is recorded, not raised: raised into a process pool it would
make the pool kill the other workers mid-step.
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
from peftlab.errors import UserError
from peftlab.metrics import selected_validation
from peftlab.sweep.members import (
    LAUNCH_FILE,
    SWEEP_FILE,
    _read_json,
    _write_record,
    read,
    refresh,
    run_ref,
    stop_requested,
)
from peftlab.sweep.planning import _key

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
    for folder in (hydra_dir, *hydra_dir.parents):
        if (folder / SWEEP_FILE).is_file():
            return folder
    raise RuntimeError(f"no {SWEEP_FILE} above Hydra's sweep dir {hydra_dir}")


def _index_of(launch: dict, job_num: int) -> tuple[int, str | None]:
    """(member index, the resume= override the parent added) of job ``job_num`` of a launch."""
    jobs = launch.get("jobs")
    if isinstance(jobs, list) and 0 <= job_num < len(jobs):
        job = jobs[job_num]
        return int(job["index"]), job.get("resume")
    return int(launch.get("offset", 0)) + job_num, None


def _launcher_pid(launch: dict, sweep_dir: Path) -> int | None:
    """The pid of the sweep process that launched this job, or None when it runs on another host.

    Each launch records its own process, so a worker left over from an earlier
    launch never takes a later ``--continue`` for its sweep; sweeps launched
    before launches recorded it fall back to sweep.json.
    """
    source = launch if launch.get("pid") else read(sweep_dir)
    if source.get("host") != socket.gethostname():
        return None
    try:
        return int(source["pid"])
    except (KeyError, TypeError, ValueError):
        return None


def _job_of(hc: Any) -> _Job:
    hydra_dir = Path(str(hc.sweep.dir))
    sweep_dir = _sweep_dir_of(hydra_dir)
    launch = _read_json(hydra_dir / LAUNCH_FILE)
    index, resume = _index_of(launch, int(hc.job.num))
    return _Job(sweep_dir, index, resume, _launcher_pid(launch, sweep_dir))


def run_member(cfg: Any) -> float | None:
    """Hydra's task function for one sweep member: train it and record how it ended.

    Returns the member's validation metric (the objective of search sweepers), or
    None when it failed. A member's failure is recorded, never raised, so the
    sweep goes on. An interrupt is recorded too; in the sweep's own process it is
    raised, so the sweep stops; in another process see ``_run_in_worker``.
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
    """Train the member and record how it ended (members/<i>.json, then sweep.json)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    task_overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task)]
    overrides = [o for o in task_overrides if o != job.resume]
    record: dict[str, Any] = {
        "overrides": overrides, "status": "running", "run": None, "pid": os.getpid(),
        "host": socket.gethostname(), "started_at": runs.now_iso(), "hydra_job": int(hc.job.num),
        "output_dir": str(hc.runtime.output_dir),
    }
    value = None
    try:
        try:
            _prepare(cfg, hc, job, record)
        finally:
            _write_record(job.sweep_dir, job.index, record)
        run = _train(cfg, hc, job, record, overrides)
        value = _objective(run, cfg)
        record.update(status=run.status, run=run_ref(job.sweep_dir, run.path), value=value)
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        raise
    except UserError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in one member must not stop the others
        traceback.print_exc()
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        record["ended_at"] = runs.now_iso()
        _write_record(job.sweep_dir, job.index, record)
        data = refresh(job.sweep_dir)
        _say_member(data, job.index, record)
    return value


def _prepare(cfg: Any, hc: Any, job: _Job, record: dict) -> None:
    """Validate the member's config; runs go where the sweep was started."""
    from omegaconf import OmegaConf

    from peftlab.config import validate

    validate(cfg)
    runs_dir = Path(str(cfg.runs_dir)).expanduser()
    if not runs_dir.is_absolute():
        # Launchers may start jobs elsewhere.
        OmegaConf.set_struct(cfg, False)
        cfg.runs_dir = str(Path(str(hc.runtime.cwd)) / runs_dir)
        OmegaConf.set_struct(cfg, True)
    if job.resume:
        # Named before training reopens it, so a resume that fails early still points at it.
        record["run"] = run_ref(job.sweep_dir, Path(str(cfg.resume)))


def _train(cfg: Any, hc: Any, job: _Job, record: dict, overrides: list[str]) -> runs.Run:
    from peftlab.config import GROUPS
    from peftlab.train import train

    def on_run(run: runs.Run) -> None:
        # Recorded the moment the folder exists: a member killed mid-run keeps its run,
        # which --continue then resumes (or starts again).
        record["run"] = run_ref(job.sweep_dir, run.path)
        _write_record(job.sweep_dir, job.index, record)

    choices = {str(k): str(v) for k, v in hc.runtime.choices.items() if k in GROUPS and isinstance(v, str)}
    argv = list(read(job.sweep_dir).get("argv") or ["peftlab", "sweep"])
    return train(cfg, overrides=overrides, argv=argv, choices=choices, show_progress=False, on_run=on_run)


def _objective(run: runs.Run, cfg: Any) -> float | None:
    """The validation value of the checkpoint the member kept (what search sweepers optimise)."""
    summary = run.summary
    return selected_validation(summary, str(summary.get("metric") or cfg.trainer.metric))


def _say_member(data: dict, index: int, record: dict) -> None:
    swept = set(data.get("swept") or [])
    shown = [o for o in record.get("overrides", []) if _key(o) in swept] or record.get("overrides", [])
    total = data.get("count") or len(data.get("members") or [])
    line = f"[{index + 1}/{total}] {record['status']}: {' '.join(shown)}"
    if record.get("value") is not None:
        line += f"  best val {data.get('metric', 'metric')} {record['value']:.4f}"
    if record.get("error"):
        line += f"  ({record['error']})"
    try:
        print(line, flush=True)
    except OSError:  # the terminal went away with the sweep; the record is what counts
        pass

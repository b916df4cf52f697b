"""Launching: a sweep's members through Hydra's configured sweeper and launcher; start and --continue."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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
    find_sweep,
    read,
    refresh,
    run_path,
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


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the sweep like Ctrl-C: the running member is checkpointed and recorded."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _next_hydra_dir(sweep_dir: Path) -> Path:
    if not (sweep_dir / "hydra").exists():
        return sweep_dir / "hydra"
    k = 2
    while (sweep_dir / f"hydra-{k}").exists():
        k += 1
    return sweep_dir / f"hydra-{k}"


def _launch_sweeper(hydra_dir: Path, task: list[str], hydra_overrides: list[str], config_dirs: list[str],
                    offset: int = 0) -> None:
    """Hydra's multirun: the configured sweeper expands ``task`` and drives the configured launcher."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, {"offset": offset})
    _quiet_optuna()
    hydra = _hydra(config_dirs)
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
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, {"jobs": jobs})
    hydra = _hydra(config_dirs)
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
                                                   p.hydra_overrides + p.extra, p.config_dirs))


def _run(sweep_dir: Path, launch: Any) -> Outcome:
    interrupted = False
    ok = False
    try:
        with _sigterm_interrupts():
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
        with _lock_file(sweep_dir):
            current = read(sweep_dir)
            current.update(status=data["status"], ended_at=data["ended_at"])
            runs.atomic_write_json(sweep_dir / SWEEP_FILE, current)
    return Outcome(sweep_dir, data, interrupted)


def resume(spec: str, *, jobs: int | None = None, hydra_overrides: Sequence[str] = (),
           announce: Any = print) -> Outcome:
    """``--continue``: run the members of a sweep that did not complete."""
    sweep_dir = find_sweep(spec).resolve()
    data = read(sweep_dir)
    if not isinstance(data.get("members"), list):
        raise UserError(f"'{sweep_dir / SWEEP_FILE}' is damaged (no members list): start the sweep again")
    if data.get("status") == "running" and data.get("host") == socket.gethostname() \
            and runs.pid_alive(data.get("pid")) and data.get("pid") != os.getpid():
        raise UserError(
            f"sweep {sweep_dir} is still running (pid {data.get('pid')}): wait for it, or stop it before --continue"
        )
    stored_hydra = list(data.get("hydra_overrides") or [])
    extra = [str(o) for o in hydra_overrides]
    for o in extra:
        if _key(o) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise UserError(f"'{o}' is not allowed: peftlab sweep keeps Hydra's output inside the sweep folder")
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
        extra = [o for o in extra if _key(o) != "hydra/launcher"] + ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    given = {_key(o) for o in extra}
    for group in ("launcher", "sweeper"):
        if f"hydra/{group}" in given:  # another plugin: the stored one's settings do not apply to it
            stored_hydra = [o for o in stored_hydra if _key(o) != f"hydra/{group}" and not _key(o).startswith(f"hydra.{group}.")]
    hydra_ovr = [o for o in stored_hydra if _key(o) not in given] + extra
    config_dirs = list(data.get("config_dirs") or [])

    data = refresh(sweep_dir, assume_dead=True)
    members = data["members"]
    todo: list[dict] = []
    for m in members:
        if m.get("status") == "completed":
            continue
        job: dict[str, Any] = {"index": int(m["index"]), "overrides": list(m.get("overrides") or [])}
        folder = run_path(sweep_dir, m.get("run"))
        if m.get("status") == "interrupted" and folder is not None and not any(_key(o) == "resume" for o in job["overrides"]):
            if any(not c.name.endswith(".tmp") for c in (folder / "checkpoints").glob("step_*")):
                job["resume"] = f"resume={_quote(str(folder.resolve()))}"
        todo.append(job)
    count = int(data.get("count") or len(members))
    missing_trials = max(0, count - len(members)) if data.get("sweeper") == OPTUNA else 0
    completed = sum(1 for m in members if m.get("status") == "completed")
    name = f"{data.get('name')}/{data.get('version')}"
    if not todo and not missing_trials:
        announce(f"sweep {name}: all {len(members)} runs completed; nothing to continue")
        with _lock_file(sweep_dir):
            data = read(sweep_dir)
            data["status"] = "completed"
            runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
        return Outcome(sweep_dir, data)
    resumed = sum(1 for j in todo if j.get("resume"))
    what = f"{len(todo) + missing_trials} of {count} runs to go ({completed} completed"
    what += f", {resumed} resume from a checkpoint)" if resumed else ")"
    announce(f"sweep {name}: continuing, {what}")
    with _lock_file(sweep_dir):
        current = read(sweep_dir)
        current.update(status="running", pid=os.getpid(), host=socket.gethostname(), ended_at=None,
                       hydra_overrides=hydra_ovr)
        runs.atomic_write_json(sweep_dir / SWEEP_FILE, current)

    def launch() -> None:
        if todo:
            # The remaining members run through the launcher alone: the sweeper already chose them.
            plain = [o for o in hydra_ovr if not _key(o).startswith("hydra/sweeper") and not _key(o).startswith("hydra.sweeper")]
            _launch_jobs(_next_hydra_dir(sweep_dir), todo, plain, config_dirs)
        if missing_trials:
            task = list(data.get("overrides") or [])
            more = [o for o in hydra_ovr if _key(o) != "hydra.sweeper.n_trials"] + [f"hydra.sweeper.n_trials={missing_trials}"]
            _launch_sweeper(_next_hydra_dir(sweep_dir), task, more, config_dirs, offset=len(members))

    return _run(sweep_dir, launch)

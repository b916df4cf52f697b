"""The member task: the function Hydra's launchers run once per sweep member.

``run_member`` stays a module-level function of an importable module: joblib and
submitit pickle it by reference (``peftlab.sweep.task.run_member``).
"""

from __future__ import annotations

import math
import os
import socket
import traceback
from pathlib import Path
from typing import Any

from peftlab import runs
from peftlab.errors import UserError
from peftlab.sweep.members import (
    LAUNCH_FILE,
    SWEEP_FILE,
    _read_json,
    _write_record,
    read,
    refresh,
    run_ref,
)
from peftlab.sweep.planning import _key


def _sweep_dir_of(hydra_dir: Path) -> Path:
    for folder in (hydra_dir, *hydra_dir.parents):
        if (folder / SWEEP_FILE).is_file():
            return folder
    raise RuntimeError(f"no {SWEEP_FILE} above Hydra's sweep dir {hydra_dir}")


def _index_of(hydra_dir: Path, job_num: int) -> tuple[int, str | None]:
    """(member index, the resume= override the parent added) of job ``job_num`` of a launch."""
    launch = _read_json(hydra_dir / LAUNCH_FILE)
    jobs = launch.get("jobs")
    if isinstance(jobs, list) and 0 <= job_num < len(jobs):
        job = jobs[job_num]
        return int(job["index"]), job.get("resume")
    return int(launch.get("offset", 0)) + job_num, None


def run_member(cfg: Any) -> float | None:
    """Hydra's task function for one sweep member: train it and record how it ended.

    Returns the member's validation metric (the objective of search sweepers), or
    None when it failed. A member's failure is recorded, never raised, so the
    sweep goes on; an interrupt is recorded and raised, so the sweep stops.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from peftlab.config import GROUPS, validate

    hc = HydraConfig.get()
    hydra_dir = Path(str(hc.sweep.dir))
    sweep_dir = _sweep_dir_of(hydra_dir)
    index, resume = _index_of(hydra_dir, int(hc.job.num))
    task_overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task)]
    overrides = [o for o in task_overrides if o != resume]
    choices = {str(k): str(v) for k, v in hc.runtime.choices.items() if k in GROUPS and isinstance(v, str)}
    info = read(sweep_dir)
    record: dict[str, Any] = {
        "overrides": overrides, "status": "running", "run": None, "pid": os.getpid(),
        "host": socket.gethostname(), "started_at": runs.now_iso(), "hydra_job": int(hc.job.num),
        "output_dir": str(hc.runtime.output_dir),
    }
    value = None
    try:
        try:
            validate(cfg)
            runs_dir = Path(str(cfg.runs_dir)).expanduser()
            if not runs_dir.is_absolute():
                # Launchers may start jobs elsewhere; runs go where the sweep was started.
                OmegaConf.set_struct(cfg, False)
                cfg.runs_dir = str(Path(str(hc.runtime.cwd)) / runs_dir)
                OmegaConf.set_struct(cfg, True)
            if resume:
                # Named before training reopens it, so a resume that fails early still points at it.
                record["run"] = run_ref(sweep_dir, Path(str(cfg.resume)))
        finally:
            _write_record(sweep_dir, index, record)
        from peftlab.train import train

        def on_run(run: runs.Run) -> None:
            # Recorded the moment the folder exists: a member killed mid-run keeps its run,
            # which --continue then resumes (or starts again).
            record["run"] = run_ref(sweep_dir, run.path)
            _write_record(sweep_dir, index, record)

        argv = list(info.get("argv") or ["peftlab", "sweep"])
        run = train(cfg, overrides=overrides, argv=argv, choices=choices, show_progress=False, on_run=on_run)
        summary = run.summary
        metric = str(summary.get("metric") or cfg.trainer.metric)
        best = summary.get("best_validation") or summary.get("final_validation") or {}
        if isinstance(best.get(metric), (int, float)) and math.isfinite(best[metric]):
            value = float(best[metric])
        record.update(status=run.status, run=run_ref(sweep_dir, run.path), value=value)
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
        _write_record(sweep_dir, index, record)
        data = refresh(sweep_dir)
        _say_member(data, index, record)
    return value


def _say_member(data: dict, index: int, record: dict) -> None:
    swept = set(data.get("swept") or [])
    shown = [o for o in record.get("overrides", []) if _key(o) in swept] or record.get("overrides", [])
    total = data.get("count") or len(data.get("members") or [])
    line = f"[{index + 1}/{total}] {record['status']}: {' '.join(shown)}"
    if record.get("value") is not None:
        line += f"  best val {data.get('metric', 'metric')} {record['value']:.4f}"
    if record.get("error"):
        line += f"  ({record['error']})"
    print(line, flush=True)

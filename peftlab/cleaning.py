"""Freeing disk space: the checkpoints of completed runs, or whole runs; never what a live process writes.

Checkpoints exist to resume a run. A completed run cannot be resumed, so its
checkpoints are dead weight; those of a run that is running, interrupted or
failed are what a resume continues from, so they stay. Whatever is removed is
removed while this process owns the run (``Run.own``), so no training can
start writing it meanwhile, and a run owned by a live process is refused. No torch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peftlab import runs
from peftlab.run_files import adapter_problem


@dataclass(frozen=True)
class Kept:
    """A run whose checkpoints stay, and why."""

    run: runs.Run
    why: str


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links are not followed); 0 when it does not exist."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:  # removed meanwhile
                continue
    return total


def human_size(n: int) -> str:
    """``"1.5 GB"``, ``"12.3 MB"``, ``"512 B"``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop returns


def keep_reason(run: runs.Run) -> str | None:
    """Why ``run``'s checkpoints must stay (it may still continue from them); None when they can go."""
    owner = run.owner()
    if owner is not None:
        return f"being written by process {owner.get('pid', '?')}"
    return _status_reason(run)


def _status_reason(run: runs.Run) -> str | None:
    """Why the checkpoints of a run nobody writes must stay, from its status alone."""
    resume = f"`peftlab train resume={run.label}` continues it from them"
    status = run.status
    if status == "running":
        return f"interrupted (its process is gone): {resume}" if runs.is_stale(run) else "running"
    if status in ("interrupted", "failed"):
        return f"{status}: {resume}"
    if status != "completed":
        return f"status {status}: whether it may resume cannot be told"
    if adapter_problem(run) is not None:
        return "completed, but its adapter is missing or damaged: the checkpoints hold its only trained weights"
    return None


def checkpoint_plan(found: Sequence[runs.Run]) -> tuple[list[runs.Run], list[Kept]]:
    """Of the runs that have checkpoints: those whose checkpoints can go, and those kept (with why)."""
    removable, kept = [], []
    for run in found:
        if not run.checkpoints_dir.is_dir():
            continue
        why = keep_reason(run)
        if why is None:
            removable.append(run)
        else:
            kept.append(Kept(run, why))
    return removable, kept


def remove_checkpoints(run: runs.Run) -> int:
    """Remove a completed run's checkpoints/ while owning the run; the bytes freed (RunBusy when owned)."""
    with run.own():
        if _status_reason(run.reload()) is not None:  # resumed between the plan and now
            return 0
        size = folder_size(run.checkpoints_dir)
        shutil.rmtree(run.checkpoints_dir)
    return size


def refuse_live(found: Sequence[runs.Run]) -> None:
    """RunBusy naming the first run a live process may still write."""
    for run in found:
        if runs.is_live(run):
            owner = run.owner() or {"pid": run.meta.get("pid")}
            pid = owner.get("pid") or "?"
            raise runs.RunBusy(f"run '{run.label}' is being written by process {pid}: wait for it to end, "
                               f"or stop it first (kill {pid}); nothing was removed")


def remove_run(run: runs.Run) -> int:
    """Remove a whole run folder while owning it (and its name's folder when it was the last version)."""
    with run.own():
        size = folder_size(run.path)
        shutil.rmtree(run.path)
    try:
        run.path.parent.rmdir()
    except OSError:  # other versions remain
        pass
    return size

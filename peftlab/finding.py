"""Finding runs from what the user typed: run folders, sweep folders, folders of runs, globs, names.

Used by ``compare`` and ``clean``. Each path may be a run folder (holds
meta.json), a sweep folder (holds sweep.json: its members' newest runs, found
by the sweep stamp in their meta.json), any folder holding run folders
(searched at any depth), a glob, or ``<name>[/<version>]`` under the runs
folder (``peftlab.runs.runs_root``): a name means all of its versions. A path
that matches nothing is a UserError. No torch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from peftlab import runs
from peftlab.errors import UserError
from peftlab.layout import STUDY_FILE, SWEEP_FILE
from peftlab.run_files import read_json_object


def find_runs(paths: Sequence[str], root: Path, notes: list[str] | None = None) -> list[runs.Run]:
    """The runs ``paths`` name, each once (by real path), in the order found; remarks go to ``notes``."""
    found: list[runs.Run] = []
    for text in paths:
        for target in _targets(str(text), Path(root)):
            found.extend(_runs_in(target, notes))
    return _once(found)


def _targets(text: str, root: Path) -> list[Path]:
    if any(ch in text for ch in "*?["):
        targets = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text), recursive=True)) if Path(m).is_dir()]
        if not targets:
            raise UserError(f"no run folders match '{text}'")
        return targets
    path = runs.typed_folder(text, root)
    if path is None:
        raise UserError(f"no such run, sweep or folder: {text} (runs are looked up under '{root}'; see --runs-dir)")
    return [path]


def _runs_in(target: Path, notes: list[str] | None) -> list[runs.Run]:
    if runs.is_run_folder(target):
        return [runs.Run(target)]
    if (target / STUDY_FILE).is_file():
        return study_runs(target, notes)
    found = sweep_member_runs(target, notes) if (target / SWEEP_FILE).is_file() else []
    return found + runs.walk_runs(target)


def study_runs(study_dir: Path, notes: list[str] | None = None) -> list[runs.Run]:
    """A study's final runs; its tuning runs (with a note) while it has none."""
    from peftlab.study import folder  # imports no torch; only when a study is read

    data = folder.read(study_dir)
    final = folder.sweep_path(study_dir, data.get("final_sweep"))
    if final is not None and final.is_dir():
        from peftlab.study.choose import recorded_edge_notes

        for edge in recorded_edge_notes(data):
            _note(notes, f"study {study_dir}: {edge}")
        return sweep_member_runs(final, notes)
    tune = folder.sweep_path(study_dir, data.get("tune_sweep"))
    if tune is None or not tune.is_dir():
        _note(notes, f"study {study_dir} has no runs yet")
        return []
    _note(notes, f"study {study_dir} has no final runs yet: these are its tuning runs (one seed per setting)")
    return sweep_member_runs(tune, notes)


def sweep_member_runs(sweep_dir: Path, notes: list[str] | None = None) -> list[runs.Run]:
    """The newest run of every member of a sweep; members without one are noted."""
    from peftlab.sweep.status import members  # imports no torch nor hydra; only when a sweep is read

    data, problem = read_json_object(sweep_dir / SWEEP_FILE)
    if problem is not None or not isinstance((data or {}).get("members"), list):
        why = problem or f"{sweep_dir / SWEEP_FILE} has no list of members"
        _note(notes, f"{why}: its members are not read")
        return []
    found = members(sweep_dir, data)
    pending = sum(1 for m in found if m.run is None)
    if pending:
        _note(notes, f"{pending} member(s) of sweep {sweep_dir} have no run folder yet")
    return [m.run for m in found if m.run is not None]


def _once(found: Sequence[runs.Run]) -> list[runs.Run]:
    seen: set[str] = set()
    out = []
    for run in found:
        key = os.path.realpath(run.path)
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)

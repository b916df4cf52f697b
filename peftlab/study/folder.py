"""The study folder ``<runs>/studies/<name>/v<N>``: study.json, and finding studies.

study.json is written when the study is created (what it is: configurations, tuned
keys and their values, seeds, its tuning sweep) and once more, atomically, when the
tuning has finished: the setting chosen for each configuration on validation and the
final sweep. Everything else (how the runs stand) is read from the sweeps' run folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab import ownership, runs
from peftlab.errors import UserError, did_you_mean
from peftlab.layout import STUDIES_DIR, STUDY_FILE
from peftlab.run_files import read_json_object
from peftlab.sweep.folder import create_described


def is_study(folder: Path) -> bool:
    return (Path(folder) / STUDY_FILE).is_file()


def read(study_dir: Path) -> dict:
    """study.json as a dict; a UserError when it is missing or damaged."""
    data, problem = read_json_object(Path(study_dir) / STUDY_FILE)
    if problem is not None or not isinstance(data, dict) or not isinstance(data.get("tuned"), list):
        raise UserError(f"'{Path(study_dir) / STUDY_FILE}' is damaged ({problem or 'no tuned keys'}): start the study again")
    return data


def create(root: Path, name: str, record: dict[str, Any]) -> Path:
    """A new study folder with its study.json; returns the folder (absolute)."""
    return create_described(Path(root) / STUDIES_DIR, name, STUDY_FILE, record)


def held(study_dir: Path) -> ownership.Ownership:
    """One process runs a study at a time: a second start of its phases is refused while this holds.

    The sweeps refuse a second launch of themselves; this also covers the moments between
    them, when the choice is made and the final sweep created (two processes would make two).
    """
    return ownership.held(study_dir, "study")


def update(study_dir: Path, **fields: Any) -> dict:
    """Add ``fields`` to study.json (one atomic replace) and return the new content."""
    data = {**read(study_dir), **fields}
    runs.atomic_write_json(Path(study_dir) / STUDY_FILE, data)
    return data


def sweep_path(study_dir: Path, ref: str | None) -> Path | None:
    """A sweep the study names (relative to the runs root it lives in, or absolute)."""
    if not ref:
        return None
    path = Path(ref)
    return path if path.is_absolute() else runs_root_of(study_dir) / path


def runs_root_of(study_dir: Path) -> Path:
    """``<root>`` of ``<root>/studies/<name>/v<N>``."""
    study_dir = Path(study_dir).resolve()
    return study_dir.parents[2] if len(study_dir.parents) > 2 else study_dir


def find_study(spec: str, runs_dir: str | Path | None = None) -> Path:
    """A study folder: a folder with study.json, or ``<name>[/vN]`` under ``<runs>/studies`` (the latest)."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if is_study(path):
        return path.resolve()
    root = runs.runs_root(runs_dir) / STUDIES_DIR
    candidate = root / text
    if is_study(candidate):
        return candidate.resolve()
    versions = [v for _, v in runs.versions(candidate) if is_study(candidate / v)]
    if versions:
        return (candidate / versions[-1]).resolve()
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    where = f"studies under '{root}': {', '.join(names)}" if names else f"no studies under '{root}'"
    raise UserError(f"'{text}' is not a study folder (no {STUDY_FILE}){did_you_mean(text, names)}: "
                    f"pass runs/studies/<name>/v<N>; {where}")

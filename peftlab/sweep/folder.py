"""The sweep folder: sweep.json (written once), its launches, the stop request, and finding sweeps.

Nothing here is rewritten to keep it current: sweep.json records what the sweep
is when it is created, each launch writes its own ``launch.json`` once, and how
the members stand is read from their run folders (``peftlab.sweep.status``).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

from peftlab import runs
from peftlab.errors import UserError, did_you_mean
from peftlab.layout import HYDRA_DIR, LAUNCH_FILE, STOP_FILE, SWEEP_FILE, SWEEPS_DIR
from peftlab.provenance import this_process
from peftlab.run_files import read_json_object


def read(sweep_dir: Path) -> dict:
    """sweep.json as a dict ({} when missing or damaged)."""
    data, _ = read_json_object(Path(sweep_dir) / SWEEP_FILE)
    return data or {}


def create(root: Path, name: str, record: dict[str, Any]) -> Path:
    """A new sweep folder ``<root>/sweeps/<name>/v<N>`` with its sweep.json; returns the folder (absolute)."""
    return create_described(Path(root) / SWEEPS_DIR, name, SWEEP_FILE, record)


def create_described(parent: Path, name: str, file_name: str, record: dict[str, Any]) -> Path:
    """A new versioned folder ``<parent>/<name>/v<N>`` holding ``file_name``: the record plus name, version,
    creation time and creator (sweeps and studies); returns the folder (absolute)."""
    folder = runs.allocate(Path(parent), name)
    path = folder.path.resolve()
    # The id tells this folder from an earlier one of the same name and version (deleted, so its
    # version number was free again, or in another store merged into this one): runs name both alike.
    data = {"name": name, "version": folder.version, "id": uuid.uuid4().hex, **record, "created_at": runs.now_iso(),
            **this_process()}
    runs.atomic_write_json(path / file_name, data)
    return path


def runs_root_of(sweep_dir: Path) -> Path:
    """The runs folder a sweep belongs to: ``<root>`` of ``<root>/sweeps/<name>/v<N>``."""
    sweep_dir = Path(sweep_dir).resolve()
    return sweep_dir.parents[2] if len(sweep_dir.parents) > 2 else sweep_dir


def sweep_ref(sweep_dir: Path, root: Path) -> str:
    """How a member's meta.json names its sweep: relative to the runs root when inside it, else absolute.

    Relative, a copied or moved run store keeps its sweeps and their members together.
    """
    sweep_dir, root = Path(sweep_dir).resolve(), Path(root).resolve()
    try:
        return str(sweep_dir.relative_to(root))
    except ValueError:
        return str(sweep_dir)


def stamp(sweep_dir: Path, root: Path, data: dict, index: int) -> dict[str, Any]:
    """What ``train`` writes into a member's new meta.json: which sweep (its id too), and which member of it."""
    ident = {"id": data["id"]} if data.get("id") else {}  # sweeps made before ids have none
    return {"sweep": {"path": sweep_ref(sweep_dir, root), "name": data.get("name"),
                      "version": data.get("version"), **ident, "member": index}}


# ---- launches: hydra/, hydra-2/, ... each with its launch.json


def hydra_dirs(sweep_dir: Path) -> list[Path]:
    """The Hydra dirs of the sweep's launches, first launch first."""
    found = [Path(sweep_dir) / HYDRA_DIR] if (Path(sweep_dir) / HYDRA_DIR).is_dir() else []
    k = 2
    while (Path(sweep_dir) / f"{HYDRA_DIR}-{k}").is_dir():
        found.append(Path(sweep_dir) / f"{HYDRA_DIR}-{k}")
        k += 1
    return found


def next_hydra_dir(sweep_dir: Path) -> Path:
    taken = hydra_dirs(sweep_dir)
    return Path(sweep_dir) / (HYDRA_DIR if not taken else f"{HYDRA_DIR}-{len(taken) + 1}")


def write_launch(hydra_dir: Path, **fields: Any) -> None:
    """launch.json, once per launch: what it runs, and the process that launched it (its members watch it)."""
    hydra_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, {**fields, **this_process(), "at": runs.now_iso()})


def read_launch(hydra_dir: Path) -> dict:
    data, _ = read_json_object(Path(hydra_dir) / LAUNCH_FILE)
    return data or {}


def latest_launch(sweep_dir: Path) -> dict:
    """The newest launch's record; sweep.json's when the sweep never launched (both name the process)."""
    launches = hydra_dirs(sweep_dir)
    return read_launch(launches[-1]) if launches else read(sweep_dir)


def live_launcher(sweep_dir: Path) -> int | None:
    """The pid of another live process on this host that launched the sweep's newest launch, or None.

    The recorded start tells that process from a later one given the same pid (after a restart, say).
    """
    record = latest_launch(sweep_dir)
    pid = record.get("pid")
    if (record.get("host") != socket.gethostname() or pid == os.getpid()
            or not runs.pid_alive(pid, record.get("pid_start"))):
        return None
    return int(pid)


# ---- stopping a sweep whose members run in other processes


def request_stop(sweep_dir: Path, reason: str) -> None:
    """Ask the members running in other processes to stop at their next step, and new ones not to start."""
    runs.atomic_write_json(Path(sweep_dir) / STOP_FILE, {"pid": os.getpid(), "reason": reason, "at": runs.now_iso()})


def stop_requested(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / STOP_FILE).is_file()


def clear_stop(sweep_dir: Path) -> None:
    """Forget a past stop request (a new launch of the sweep begins)."""
    (Path(sweep_dir) / STOP_FILE).unlink(missing_ok=True)


# ---- finding a sweep from what the user typed


def find_sweep(spec: str, runs_dir: str | Path | None = None) -> Path:
    """A sweep folder: a folder with sweep.json, or ``<name>[/vN]`` under ``<runs>/sweeps`` (the latest version)."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    if (path / SWEEP_FILE).is_file():
        return path
    root = runs.runs_root(runs_dir) / SWEEPS_DIR
    candidate = root / text
    if (candidate / SWEEP_FILE).is_file():
        return candidate
    versions = [v for _, v in runs.versions(candidate) if (candidate / v / SWEEP_FILE).is_file()]
    if versions:
        return candidate / versions[-1]
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hint = did_you_mean(text, names)
    where = f"sweeps under '{root}': {', '.join(names)}" if names else f"no sweeps under '{root}'"
    raise UserError(f"'{text}' is not a sweep folder (no {SWEEP_FILE}){hint}: pass runs/sweeps/<name>/v<N>; {where}")

"""The sweep folder: sweep.json, the members' own records, and the runs they name."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from peftlab import runs
from peftlab.errors import UserError

SWEEP_FILE = "sweep.json"
MEMBERS_DIR = "members"
LAUNCH_FILE = "launch.json"  # in a launch's Hydra dir: which member each job number is
LOCK_FILE = ".lock"


def _lock_file(sweep_dir: Path):
    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: atomic writes only
            yield
            return
        with open(sweep_dir / LOCK_FILE, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return locked()


def read(sweep_dir: Path) -> dict:
    try:
        with open(Path(sweep_dir) / SWEEP_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_ref(sweep_dir: Path, run_path: Path) -> str:
    """How sweep.json names a member run: relative to the runs folder when inside it."""
    run_path = Path(run_path).resolve()
    sweep_dir = Path(sweep_dir).resolve()
    if len(sweep_dir.parents) > 2:
        try:
            return str(run_path.relative_to(sweep_dir.parents[2]))
        except ValueError:
            pass
    return str(run_path)


def run_path(sweep_dir: Path, ref: str | None) -> Path | None:
    """The folder a member's ``run`` names (the way ``peftlab compare`` looks it up)."""
    if not ref:
        return None
    p = Path(ref)
    if p.is_absolute():
        return p
    sweep_dir = Path(sweep_dir).resolve()
    root = sweep_dir.parents[2] if len(sweep_dir.parents) > 2 else sweep_dir
    for candidate in (root / p, sweep_dir / p, root.parent / p, p):
        if (candidate / "meta.json").is_file():
            return candidate
    return root / p


def _dead(record: dict) -> bool:
    """Whether the process that wrote a 'running' record is gone (False when it cannot be told)."""
    if record.get("host") != socket.gethostname():
        return False
    return runs.pid_alive(record.get("pid")) is False


def refresh(sweep_dir: Path, *, assume_dead: bool = False) -> dict:
    """Rebuild sweep.json's members from members/<i>.json and the runs' own status; returns it.

    ``assume_dead`` treats members still marked running as interrupted (used by
    ``--continue`` once it has made sure the sweep's process is gone).
    """
    sweep_dir = Path(sweep_dir)
    with _lock_file(sweep_dir):
        data = read(sweep_dir)
        if not data:
            return data
        members: dict[int, dict] = {}
        for i, m in enumerate(data.get("members") or []):
            if isinstance(m, dict):
                members[int(m.get("index", i))] = m
        records: dict[int, dict] = {}
        for f in sorted((sweep_dir / MEMBERS_DIR).glob("*.json")):
            rec = _read_json(f)
            if "index" in rec:
                records[int(rec["index"])] = rec
        for index in sorted(set(members) | set(records)):
            member = dict(members.get(index) or {"overrides": [], "run": None, "status": "pending"})
            member["index"] = index
            rec = records.get(index)
            if rec:
                member["overrides"] = rec.get("overrides") or member.get("overrides") or []
                member["status"] = rec.get("status", "running")
                member["run"] = rec.get("run")  # the latest attempt's run (None until it has one)
                if rec.get("error"):
                    member["error"] = rec["error"]
                else:
                    member.pop("error", None)
                if member["status"] == "running" and (assume_dead or _dead(rec)):
                    member["status"] = "interrupted"
            folder = run_path(sweep_dir, member.get("run"))
            if folder is not None and member["status"] != "pending":
                # The run folder has the last word on how the member's training ended.
                run = runs.Run(folder)
                status = run.status
                if status == "running" and (assume_dead or runs.is_stale(run)):
                    status = "interrupted"
                if status in runs.TERMINAL:
                    member["status"] = status
                elif status == "unknown" and member["status"] == "completed":
                    member["status"] = "missing"
            members[index] = {k: member[k] for k in ("index", "overrides", "run", "status", "error") if k in member}
        data["members"] = [members[i] for i in sorted(members)]
        counts: dict[str, int] = {}
        for m in data["members"]:
            counts[m["status"]] = counts.get(m["status"], 0) + 1
        data["counts"] = counts
        runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
        return data


def _write_record(sweep_dir: Path, index: int, record: dict) -> None:
    folder = Path(sweep_dir) / MEMBERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(folder / f"{index}.json", {"index": index, **record})


def find_sweep(spec: str, runs_dir: str | None = None) -> Path:
    """A sweep folder from what the user typed: a folder with sweep.json, or <name>[/vN] under <runs>/sweeps."""
    from peftlab.errors import did_you_mean

    text = str(spec).strip()
    path = Path(text).expanduser()
    if (path / SWEEP_FILE).is_file():
        return path
    root = runs.runs_root(runs_dir) / "sweeps"
    for candidate in (root / text,):
        if (candidate / SWEEP_FILE).is_file():
            return candidate
        versions = [v for _, v in runs.versions(candidate) if (candidate / v / SWEEP_FILE).is_file()]
        if versions:
            return candidate / versions[-1]
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hint = did_you_mean(text, names)
    where = f"sweeps under '{root}': {', '.join(names)}" if names else f"no sweeps under '{root}'"
    raise UserError(f"'{text}' is not a sweep folder (no {SWEEP_FILE}){hint}: pass runs/sweeps/<name>/v<N>; {where}")

"""The sweep folder: sweep.json, the members' own records, and the runs they name."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from peftlab import runs
from peftlab.errors import UserError

SWEEP_FILE = "sweep.json"
MEMBERS_DIR = "members"
LAUNCH_FILE = "launch.json"  # in a launch's Hydra dir: which member each job number is, who launched it
LOCK_FILE = ".lock"
STOP_FILE = "stop"  # written by a sweep process that is stopping (see request_stop)


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
    """The folder a member's ``run`` names, or None when the member has no run yet.

    ``run_ref`` writes ``run`` relative to the sweep's runs root
    (``sweep_dir.parents[2]``: ``<root>/sweeps/<name>/<vN>`` -> ``<root>``) or
    absolute, so an absolute ``ref`` is taken as is and a relative one is looked
    up under that root only: never under the current directory, whose own
    ``runs/`` may hold unrelated runs of the same name. The folder may not exist
    (the caller checks). ``peftlab compare`` and ``--continue`` both resolve
    members here.
    """
    if not ref or not isinstance(ref, str):
        return None
    p = Path(ref)
    if p.is_absolute():
        return p
    # resolved as run_ref resolves it, so the two agree on which folder is the root
    sweep_dir = Path(sweep_dir).resolve()
    root = sweep_dir.parents[2] if len(sweep_dir.parents) > 2 else sweep_dir
    return root / p


def _pid_gone(record: dict) -> bool:
    """Whether the process that wrote a record is gone (False when it cannot be told: another host)."""
    if record.get("host") != socket.gethostname():
        return False
    return runs.pid_alive(record.get("pid")) is False


def _owned(run: runs.Run) -> bool:
    """Whether ownership of the run can be told exactly: it has the lock file its writers hold."""
    return (run.path / runs.OWNER_FILE).exists()


def _writer_gone(record: dict, run: runs.Run | None, assume_dead: bool) -> bool:
    """Whether the member a 'running' record describes is no longer being trained.

    Once the member's run trains, the run's flock says so exactly (the kernel drops
    it when its writer dies, and a live writer is never taken for dead). Before
    that, or for runs without the lock file, the record's pid is the only clue,
    and ``assume_dead`` overrides it.
    """
    if run is not None and run.status == "running" and _owned(run):
        return run.owner() is None
    return assume_dead or _pid_gone(record)


def _abandoned(run: runs.Run, assume_dead: bool) -> bool:
    """A run still marked running that nobody writes any more (exact when the run has its lock file)."""
    if run.status != "running":
        return False
    return runs.is_stale(run) or (assume_dead and not _owned(run))


def records(sweep_dir: Path) -> dict[int, dict]:
    """What each member's task wrote (members/<i>.json), by member index."""
    found: dict[int, dict] = {}
    for f in sorted((Path(sweep_dir) / MEMBERS_DIR).glob("*.json")):
        rec = _read_json(f)
        if "index" in rec:
            found[int(rec["index"])] = rec
    return found


def _member_status(sweep_dir: Path, member: dict, rec: dict | None, assume_dead: bool) -> str:
    """How a member stands: its record's word, corrected by whether its writer lives and by its run."""
    status = str(rec.get("status", "running")) if rec else str(member.get("status") or "pending")
    folder = run_path(sweep_dir, member.get("run"))
    run = runs.Run(folder) if folder is not None else None
    if status == "running" and rec and _writer_gone(rec, run, assume_dead):
        status = "interrupted"
    if run is None or status == "pending":
        return status
    # The run folder has the last word on how the member's training ended.
    run_status = "interrupted" if _abandoned(run, assume_dead) else run.status
    if run_status in runs.TERMINAL:
        return run_status
    if run_status == "unknown" and status == "completed":
        return "missing"
    return status


def _merged_member(sweep_dir: Path, index: int, member: dict | None, rec: dict | None, assume_dead: bool) -> dict:
    member = dict(member or {"overrides": [], "run": None, "status": "pending"})
    member["index"] = index
    if rec:
        member["overrides"] = rec.get("overrides") or member.get("overrides") or []
        member["run"] = rec.get("run")  # the latest attempt's run (None until it has one)
        if rec.get("error"):
            member["error"] = rec["error"]
        else:
            member.pop("error", None)
    member["status"] = _member_status(sweep_dir, member, rec, assume_dead)
    return {k: member[k] for k in ("index", "overrides", "run", "status", "error") if k in member}


def refresh(sweep_dir: Path, *, assume_dead: bool = False) -> dict:
    """Rebuild sweep.json's members from members/<i>.json and the runs' own status; returns it.

    ``assume_dead`` treats members still marked running as interrupted when
    nothing tells better (used once the sweep's process is known to be gone); a
    run that a live process still writes (its flock, see ``Run.own``) stays running.
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
        recs = records(sweep_dir)
        for index in sorted(set(members) | set(recs)):
            members[index] = _merged_member(sweep_dir, index, members.get(index), recs.get(index), assume_dead)
        data["members"] = [members[i] for i in sorted(members)]
        counts: dict[str, int] = {}
        for m in data["members"]:
            counts[m["status"]] = counts.get(m["status"], 0) + 1
        data["counts"] = counts
        runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
        return data


def member_runs(sweep_dir: Path) -> dict[int, Path]:
    """Each member's latest run folder, from sweep.json and the newer members/<i>.json (read only)."""
    refs = {int(m.get("index", i)): m.get("run") for i, m in enumerate(read(sweep_dir).get("members") or [])
            if isinstance(m, dict)}
    refs.update({i: rec.get("run") for i, rec in records(sweep_dir).items() if rec.get("run")})
    folders = {i: run_path(sweep_dir, ref) for i, ref in refs.items()}
    return {i: f for i, f in sorted(folders.items()) if f is not None}


def written_runs(sweep_dir: Path) -> list[tuple[int, Path, dict]]:
    """(member index, run folder, owner) of each member run that a live process still writes."""
    busy = []
    for index, folder in member_runs(sweep_dir).items():
        owner = runs.Run(folder).owner()
        if owner is not None:
            busy.append((index, folder, owner))
    return busy


def running_elsewhere(sweep_dir: Path) -> list[dict]:
    """Records of members that other live processes (a launcher's workers) are still running."""
    return [rec for rec in records(sweep_dir).values()
            if rec.get("status") == "running" and rec.get("pid") != os.getpid() and not _pid_gone(rec)]


# ---- stopping a sweep whose members run in other processes


def request_stop(sweep_dir: Path, reason: str) -> None:
    """Ask the members running in other processes to stop at their next step, and new ones not to start."""
    runs.atomic_write_json(Path(sweep_dir) / STOP_FILE,
                           {"pid": os.getpid(), "reason": reason, "at": runs.now_iso()})


def stop_requested(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / STOP_FILE).is_file()


def clear_stop(sweep_dir: Path) -> None:
    """Forget a past stop request (a new launch of the sweep begins)."""
    (Path(sweep_dir) / STOP_FILE).unlink(missing_ok=True)


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

"""Provenance of a run: git commit and dirty flag, package versions, host, process.

Read without importing the packages (importlib.metadata), so recording it costs
nothing at start-up; no torch here.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PACKAGES = (
    "peftlab",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "peft",
    "safetensors",
)



def _git(args: list[str], cwd: str | Path | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_info(cwd: str | Path | None = None) -> dict:
    """``{"commit": sha | None, "dirty": bool | None}`` of the git repo at ``cwd``.

    dirty means tracked files differ from HEAD (untracked files, such as run
    folders, do not count). Without git, or outside a repo, both are None.
    """
    commit = _git(["rev-parse", "--verify", "HEAD"], cwd)
    commit = (commit.strip() or None) if commit is not None else None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    dirty = None if status is None else bool(status.strip())
    return {"commit": commit, "dirty": dirty}


def environment() -> dict:
    """Python, platform, host and package versions (read from metadata, nothing is imported)."""
    from importlib import metadata

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "executable": sys.executable,
        "packages": packages,
    }


def new_meta(argv: list[str], seed: int, device: str | None = None) -> dict:
    """The initial meta.json of a run that is starting now."""
    return {
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ended_at": None,
        "argv": list(argv),
        "seed": seed,
        "device": device,
        **this_process(),
        "git": git_info(),
        "environment": environment(),
    }


def pid_alive(pid: Any, started: Any = None) -> bool | None:
    """Whether process ``pid`` exists on this host (None when it cannot be told).

    ``started``: the process's ``process_start`` when it was recorded. A pid is
    reused, by a later process or after a restart, so a live pid whose start
    differs is another process: the recorded one is gone.
    """
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    if started:
        now = process_start(pid)
        return now is None or now == started
    return True


def this_process() -> dict[str, Any]:
    """What names this process in a record: pid, its start (see ``process_start``) and host."""
    return {"pid": os.getpid(), "pid_start": process_start(), "host": socket.gethostname()}


def process_start(pid: int | None = None) -> str | None:
    """When process ``pid`` (this one by default) started, as ``<boot id>:<clock ticks after boot>``.

    With its pid it names one process for good. None where /proc does not tell
    (not Linux) or the process is gone.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{os.getpid() if pid is None else int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    after_name = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return f"{boot}:{after_name[19]}" if len(after_name) > 19 else None  # field 22 of proc(5): starttime

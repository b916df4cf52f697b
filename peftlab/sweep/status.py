"""How a sweep stands: a query over the run folders of its members.

A member's runs are the runs under the sweep's runs root whose meta.json names
the sweep (``meta["sweep"]``, stamped by ``train`` when the member's folder is
created). A member stands as its newest run: completed, failed, interrupted,
or running while a live process writes it (a run marked running that nobody
owns any more was killed: interrupted, see ``runs.is_stale``). A member without
a run is pending. Nothing is recorded besides the run folders, so nothing can
disagree with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from peftlab import runs
from peftlab.sweep.folder import live_launcher, read, runs_root_of

PENDING = "pending"


@dataclass(frozen=True)
class Member:
    """One member of a sweep and its newest run."""

    index: int
    overrides: list[str]
    run: runs.Run | None
    status: str

    @property
    def error(self) -> str | None:
        return self.run.meta.get("error") if self.run is not None and self.status == "failed" else None

    @property
    def retryable(self) -> bool:
        """Failed for the machine's sake (a full disk), not the setting's: not a result, to run again."""
        return self.error is not None and self.run.meta.get("failure") in runs.RETRYABLE_FAILURES


@dataclass
class SweepState:
    """sweep.json, every member as its runs say, and what that makes of the sweep."""

    sweep_dir: Path
    data: dict
    members: list[Member] = field(default_factory=list)
    status: str = PENDING

    @property
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for m in self.members:
            found[m.status] = found.get(m.status, 0) + 1
        return found

    @property
    def expected(self) -> int:
        """How many members the sweep makes (a search sweeper's members appear as it runs)."""
        return max(len(self.members), int(self.data.get("count") or 0))


def names_sweep(run: runs.Run, sweep_dir: Path, root: Path, sweep_id: str | None = None) -> bool:
    """Whether ``run``'s meta.json stamps it a member of ``sweep_dir`` (``root``: the runs root, resolved).

    ``sweep_id``: the sweep's id (sweep.json), when it has one. A run must then carry the
    same: the path alone also names the runs of an earlier sweep of that name and version.
    """
    stamped = run.sweep or {}
    ref = stamped.get("path")
    if not isinstance(ref, str) or not ref:
        return False
    if Path(os.path.normpath(root / ref)) != sweep_dir:  # root / an absolute ref is that ref
        return False
    return sweep_id is None or stamped.get("id") == sweep_id


def sweep_runs(sweep_dir: Path, data: dict | None = None) -> list[runs.Run]:
    """Every run of the sweep's members (retries included), newest first; ``data``: its sweep.json, if read."""
    sweep_dir = Path(sweep_dir).resolve()
    root = runs_root_of(sweep_dir)
    sweep_id = (read(sweep_dir) if data is None else data).get("id")
    return [r for r in runs.list_runs(root) if names_sweep(r, sweep_dir, root, sweep_id)]


def run_status(run: runs.Run) -> str:
    """A member run's status; running only while a live process writes it."""
    return "interrupted" if runs.is_stale(run) else run.status


def members(sweep_dir: Path, data: dict | None = None) -> list[Member]:
    """The sweep's members, by index: those sweep.json lists, and those a search sweeper added as it ran."""
    data = read(sweep_dir) if data is None else data
    listed = {int(m.get("index", i)): list(m.get("overrides") or [])
              for i, m in enumerate(data.get("members") or []) if isinstance(m, dict)}
    newest: dict[int, runs.Run] = {}
    for run in sweep_runs(sweep_dir, data):  # newest first: the first run seen of a member is its newest
        index = run.sweep.get("member") if run.sweep else None
        if isinstance(index, int) and index not in newest:
            newest[index] = run
    out = []
    for index in sorted(set(listed) | set(newest)):
        run = newest.get(index)
        overrides = listed[index] if index in listed else run.overrides()
        out.append(Member(index, overrides, run, run_status(run) if run is not None else PENDING))
    return out


def state(sweep_dir: Path) -> SweepState:
    """How the sweep stands now (see ``overall``)."""
    data = read(sweep_dir)
    found = SweepState(Path(sweep_dir), data, members(sweep_dir, data))
    found.status = overall(found, launcher_alive=live_launcher(sweep_dir) is not None)
    return found


def overall(found: SweepState, launcher_alive: bool) -> str:
    """running (a live process launches or trains it) | completed | failed (the rest completed) | interrupted."""
    counts = found.counts
    if launcher_alive or counts.get("running"):
        return "running"
    done = counts.get("completed", 0)
    if found.expected and done == found.expected:
        return "completed"
    if found.expected and done + counts.get("failed", 0) == found.expected:
        return "failed"
    return "interrupted"


def written_runs(sweep_dir: Path) -> list[tuple[runs.Run, dict]]:
    """(run, owner) of each member run that a live process still writes (its flock, see ``Run.own``)."""
    busy = []
    for run in sweep_runs(sweep_dir):
        owner = run.owner()
        if owner is not None:
            busy.append((run, owner))
    return busy


def running_elsewhere(sweep_dir: Path) -> list[runs.Run]:
    """Member runs that other live processes (a launcher's workers) are still training."""
    return [run for run, owner in written_runs(sweep_dir) if owner.get("pid") != os.getpid()]

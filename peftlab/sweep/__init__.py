"""Sweeps: many runs from one command, through Hydra's own multirun machinery.

``peftlab sweep method=lora,pissa method.rank=4,8,16 seed=0,1,2`` composes the
multirun with Hydra and hands it to the configured sweeper and launcher, so every
Hydra plugin works unchanged: the basic launcher (one member after the other),
the joblib launcher (``--jobs N``), the submitit launchers (``hydra/launcher=
submitit_local`` or ``submitit_slurm``) and the Optuna sweeper (``hydra/sweeper=
optuna``). Nothing here schedules jobs itself.

A sweep is a versioned folder ``<runs>/sweeps/<name>/v<N>``::

    sweep.json        {"name", "version", "grid", "members": [{"index", "overrides", "run", "status"}], ...}
    members/<i>.json  what member i's task wrote (atomically): status, run folder, error, pid, ...
    hydra/            Hydra's sweep dir of the first launch (multirun.yaml, one .hydra/ per job,
                      launch.json: which member each job is, and the pid and host that launched it)
    hydra-2/, ...     Hydra's sweep dir of each --continue
    stop              present while the sweep process asks its members in other processes to stop

Members that run in other processes on this host are tied to the sweep process
that launched them: they do not start when it is gone, and while they train its
death (kill -9 included) or its stop request stops them at the next step
boundary, checkpointed, after which the worker exits. No two processes ever
write one run folder: a run is owned (``Run.own``) by the process that trains
it, and ``--continue`` refuses while any member's run is still owned.

Members finish in other processes (joblib, submitit), so each writes only its own
``members/<i>.json``, naming its run folder as soon as training creates it (so a
member killed mid-run still has its run); ``sweep.json`` is rebuilt from those
files (under a file lock) after every member, at the end of a launch and on
``--continue``. A member's
``run`` is its run folder relative to the runs folder (``sweep_dir.parents[2]``)
when it lies inside it, else absolute; ``peftlab compare`` reads it from there.

``--continue`` re-reads the sweep and launches, with the sweep's Hydra launcher,
only the members whose run did not complete: interrupted runs with a checkpoint
resume from it (``resume=``), the others start again. No torch at module level:
the member task imports the training loop when it runs.

The package, by responsibility: ``planning`` (Plan, grid expansion and validation,
Hydra error translation), ``members`` (the sweep folder: records, sweep.json
rebuild, locking, finding sweeps and member runs), ``task`` (``run_member``, the
task function Hydra's launchers run) and ``launch`` (Hydra's sweeper and launcher,
start, --continue, SIGTERM).
"""

from __future__ import annotations

from peftlab.sweep.launch import Outcome, resume, start
from peftlab.sweep.members import (
    LAUNCH_FILE,
    LOCK_FILE,
    MEMBERS_DIR,
    SWEEP_FILE,
    find_sweep,
    read,
    refresh,
    run_path,
    run_ref,
)
from peftlab.sweep.planning import BASIC, OPTUNA, PLUGINS_HINT, Plan, _is_hydra, plan
from peftlab.sweep.task import run_member

__all__ = [  # noqa: RUF022 - grouped: constants, classes, functions, then what the CLI borrows
    "BASIC", "LAUNCH_FILE", "LOCK_FILE", "MEMBERS_DIR", "OPTUNA", "PLUGINS_HINT", "SWEEP_FILE",
    "Outcome", "Plan",
    "find_sweep", "plan", "read", "refresh", "resume", "run_member", "run_path", "run_ref", "start",
    "_is_hydra",  # the CLI splits --continue's overrides with it
]

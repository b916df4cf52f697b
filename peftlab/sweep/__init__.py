"""Sweeps: many runs from one command, through Hydra's own multirun machinery.

``peftlab sweep method=lora,pissa method.rank=4,8,16 seed=0,1,2`` composes the
multirun with Hydra and hands it to the configured sweeper and launcher, so every
Hydra plugin works unchanged: the basic launcher (one member after the other),
the joblib launcher (``--jobs N``), the submitit launchers (``hydra/launcher=
submitit_local`` or ``submitit_slurm``) and the Optuna sweeper (``hydra/sweeper=
optuna``). Nothing here schedules jobs itself.

The run folders are the single source of truth. Each member's run is an
ordinary run folder whose meta.json says which sweep and which member it is
(``meta["sweep"] = {"path", "name", "version", "id", "member"}``, ``path``
relative to the runs folder when inside it; ``id`` is the sweep's, so a later
sweep given the same name and version, after this one's folder was deleted,
does not take these runs). A member that fails before training gets a run
folder too, marked failed; one that was to resume keeps its interrupted run,
which the next ``--continue`` resumes again. A sweep folder
``<runs>/sweeps/<name>/v<N>`` only says what the sweep is, written once::

    sweep.json        {"name", "version", "grid", "members": [{"index", "overrides"}], "argv", ...}
    hydra/            Hydra's sweep dir of the first launch (multirun.yaml, one .hydra/ per job,
                      launch.json: which member each job is, its Hydra overrides, and the pid and
                      host that launched it)
    hydra-2/, ...     Hydra's sweep dir of each --continue
    stop              present while the sweep process asks its members in other processes to stop

How the sweep stands (``status``), what ``--continue`` runs again and what
``peftlab compare <sweep folder>`` reads are queries over the run folders: a
member stands as its newest run, running only while a live process owns it.

Members that run in other processes on this host are tied to the sweep process
that launched them: they do not start when it is gone, and while they train its
death (kill -9 included) or its stop request stops them at the next step
boundary, checkpointed, after which the worker exits. No two processes ever
write one run folder: a run is owned (``Run.own``) by the process that trains
it, and ``--continue`` refuses while any member's run is still owned.

``--continue`` launches, with the sweep's Hydra launcher, only the members
whose newest run did not complete: interrupted runs with a checkpoint resume
from it (``resume=``), the others start again. No torch at module level: the
member task imports the training loop when it runs.

The package, by responsibility: ``planning`` (Plan, grid expansion and
validation, Hydra error translation), ``folder`` (the sweep folder: sweep.json,
launches, the stop request, finding sweeps), ``status`` (members and the sweep
as their run folders say), ``task`` (``run_member``, the task function Hydra's
launchers run) and ``launch`` (Hydra's sweeper and launcher, start, --continue,
SIGTERM).
"""

from __future__ import annotations

from peftlab.sweep.folder import find_sweep, read
from peftlab.sweep.launch import Outcome, resume, start, start_members
from peftlab.sweep.planning import BASIC, OPTUNA, PLUGINS_HINT, Plan, is_hydra, plan
from peftlab.sweep.status import Member, SweepState, members, state, sweep_runs
from peftlab.sweep.task import run_member

__all__ = [  # noqa: RUF022 - grouped: constants, classes, functions
    "BASIC", "OPTUNA", "PLUGINS_HINT",
    "Member", "Outcome", "Plan", "SweepState",
    "find_sweep", "is_hydra", "members", "plan", "read", "resume", "run_member", "start", "start_members", "state",
    "sweep_runs",
]

"""``peftlab clean``: free disk space: the checkpoints of completed runs, or (``--runs``) whole runs. No torch."""

from __future__ import annotations

from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option, where_option

LISTED = 10  # runs named in the confirmation question before "..."


@app.command("clean")
def clean_command(
    specs: Optional[List[str]] = typer.Argument(
        None, metavar="[RUNS]...",
        help="runs to consider: run folders, names (all their versions), name/vN, sweep folders, globs "
        "(default: every run under --runs-dir)",
    ),
    where: Optional[List[str]] = where_option("status=failed, method=lora, 'trainer.max_steps<100'"),
    whole_runs: bool = typer.Option(
        False, "--runs", help="remove the selected runs entirely, not only their checkpoints (asks first; "
        "select them with RUNS or --where)",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="with --runs: remove without asking"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be removed; remove nothing"),
    runs_dir: Optional[str] = runs_dir_option(),
) -> None:
    """Free disk space: remove the checkpoints of completed runs, or with --runs whole runs.

    Checkpoints only serve to resume a run, and a completed run cannot be
    resumed, so its checkpoints/ folder goes. The checkpoints of running,
    interrupted and failed runs stay (each is named, with why), since those
    runs may still continue. --runs removes the selected runs entirely after a
    confirmation (--yes skips it); a removed sweep member counts as not run, so
    `peftlab sweep --continue` trains it again. A run that a live process
    writes is never touched.
    """
    from peftlab import runs
    from peftlab.errors import UserError

    root = runs.runs_root(runs_dir)
    if whole_runs and not specs and not where:
        raise UserError("--runs removes whole runs: name them (e.g. peftlab clean --runs lora-minilm-stdlib_docs/v2) "
                        "or select them with --where (e.g. --where status=failed)")
    found = _selected(specs or [], where or [], root)
    if whole_runs:
        _remove_runs(found, yes, dry_run)
    else:
        _remove_checkpoints(found, dry_run)


def _selected(specs: List[str], where: List[str], root) -> list:
    from peftlab import runs
    from peftlab.finding import find_runs
    from peftlab.where import filter_runs

    found = find_runs(specs, root) if specs else runs.list_runs(root)
    return filter_runs(found, where)


def _remove_checkpoints(found: list, dry_run: bool) -> None:
    from peftlab.cleaning import checkpoint_plan, folder_size, human_size, remove_checkpoints
    from peftlab.runs import RunBusy

    removable, kept = checkpoint_plan(found)
    for k in kept:
        say(f"kept checkpoints of {k.run.label}: {k.why}")
    freed = 0
    for run in removable:
        if dry_run:
            size = folder_size(run.checkpoints_dir)
        else:
            try:
                size = remove_checkpoints(run)
            except RunBusy:  # a resume started meanwhile
                say(f"kept checkpoints of {run.label}: being written")
                continue
        freed += size
        say(f"{'would remove' if dry_run else 'removed'} checkpoints of {run.label} ({human_size(size)})")
    if not removable:
        say("no checkpoints of completed runs to remove")
        return
    n = len(removable)
    say(f"{'would free' if dry_run else 'freed'} {human_size(freed)} (checkpoints of {n} completed run{'s' * (n != 1)})")


def _remove_runs(found: list, yes: bool, dry_run: bool) -> None:
    from peftlab.cleaning import folder_size, human_size, refuse_live, remove_run

    if not found:
        say("no runs match: nothing to remove")
        return
    refuse_live(found)
    total = sum(folder_size(run.path) for run in found)
    labels = ", ".join(run.label for run in found[:LISTED]) + (", ..." if len(found) > LISTED else "")
    what = f"{len(found)} run{'s' * (len(found) != 1)} ({human_size(total)}): {labels}"
    if dry_run:
        say(f"would remove {what}")
        return
    if not yes and not _confirm(f"remove {what}?"):
        say("nothing removed")
        raise typer.Exit(1)
    freed = sum(remove_run(run) for run in found)
    say(f"removed {len(found)} run{'s' * (len(found) != 1)}, freed {human_size(freed)}")


def _confirm(question: str) -> bool:
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:  # no answer (end of input): the safe one
        print()
        return False


def say(message: str) -> None:
    """One plain line: labels and commands stay copyable."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)

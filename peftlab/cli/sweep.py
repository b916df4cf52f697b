"""``peftlab sweep [OVERRIDES...]``: many runs from Hydra's multirun syntax, into a sweep folder."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import RUNS_DIR_HELP, console, display_path, with_runs_dir

SHOWN_STATUSES = ("completed", "failed", "interrupted", "running", "pending")


@app.command("sweep", context_settings={"allow_extra_args": False})
def sweep_command(
    overrides: Optional[List[str]] = typer.Argument(
        None,
        help="Hydra overrides with multirun syntax, e.g. method=lora,pissa method.rank=4,8,16 seed=range(3) "
        "(hydra/launcher=..., hydra/sweeper=optuna and hydra.* settings pass through to Hydra)",
    ),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", help="run N members in parallel (= hydra/launcher=joblib hydra.launcher.n_jobs=N)"
    ),
    continue_: Optional[str] = typer.Option(
        None, "--continue", metavar="SWEEP",
        help="continue a stopped sweep (runs/sweeps/<name>/vN, or <name>): run only the members that did not complete",
    ),
    status_of: Optional[str] = typer.Option(
        None, "--status", metavar="SWEEP", help="show how a sweep's members stand, from their run folders; run nothing",
    ),
    name: Optional[str] = typer.Option(None, "--name", help="sweep folder name (default: the swept keys)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the members and exit; create nothing"),
    config_dir: Optional[List[str]] = typer.Option(None, "--config-dir", help="extra config folder(s) searched after the shipped ones"),
    runs_dir: Optional[str] = typer.Option(
        None, "--runs-dir", help=f"{RUNS_DIR_HELP}; a new sweep: the same as runs_dir=..."
    ),
) -> None:
    """Run a grid (or a search) of trainings through Hydra's sweepers and launchers.

    Every member is an ordinary run folder that names its sweep and member
    index in its meta.json; the sweep folder records the grid and each member's
    overrides. Compare them with `peftlab compare <sweep folder>`, see how they
    stand with `--status <sweep folder>`, continue a stopped sweep with
    `--continue <sweep folder>`. Exit code 0 when every member completed, 1
    when some failed, 2 for a mistake in the command, 130 when interrupted.
    """
    from peftlab import sweep as sw

    overrides = list(overrides or [])
    if status_of is not None or continue_ is not None:
        _check_stored_options(sw, overrides, name, dry_run, config_dir, status_of, continue_)
    if status_of is not None:
        found = sw.state(sw.find_sweep(status_of, runs_dir).resolve())
        _report(sw.Outcome(found), members=True)
        return
    if continue_ is not None:
        outcome = sw.resume(continue_, jobs=jobs, hydra_overrides=overrides, runs_dir=runs_dir, announce=say)
    else:
        plan = sw.plan(with_runs_dir(overrides, runs_dir), jobs=jobs, config_dirs=config_dir or [], name=name)
        if dry_run:
            say(f"sweep {plan.name}: {plan.describe()}")
            for i, member in enumerate(plan.members or []):
                say(f"  [{i + 1}] {' '.join(member)}")
            return
        outcome = sw.start(plan, argv=["peftlab", *sys.argv[1:]], announce=say)
    _report(outcome)
    _exit(outcome)


def _check_stored_options(sw, overrides, name, dry_run, config_dir, status_of, continue_) -> None:
    """--status and --continue work on a stored sweep: what defines a sweep cannot be given again."""
    from peftlab.errors import UserError

    if status_of is not None and continue_ is not None:
        raise UserError("--status and --continue are two commands: give one of them")
    option = "--status" if status_of is not None else "--continue"
    if name or dry_run or config_dir or (status_of is not None and overrides):
        allowed = "--runs-dir" if status_of is not None else "--jobs, --runs-dir and hydra.* overrides"
        raise UserError(f"{option} takes only {allowed}: the rest is stored in the sweep")
    task = [o for o in overrides if not sw.is_hydra(o)]
    if task:
        raise UserError(
            f"--continue runs the sweep's own members; '{task[0]}' cannot change them "
            f"(start a new sweep instead; only hydra.* / hydra/ overrides are allowed here)"
        )


def _report(outcome, members: bool = False) -> None:
    """How the sweep stands, what failed, and what to do next."""
    found = outcome.state
    data, counts = found.data, found.counts
    parts = [f"{counts[k]} {k}" for k in SHOWN_STATUSES if counts.get(k)]
    say(f"sweep {data.get('name')}/{data.get('version')}: {', '.join(parts) or 'no runs'} of {found.expected}"
        f" ({found.status})")
    swept = set(data.get("swept") or [])
    for m in found.members:
        shown = [o for o in m.overrides if o.partition("=")[0].lstrip("+~") in swept] or m.overrides
        if members:
            run = m.run.label if m.run is not None else "no run yet"
            say(f"  #{m.index} {m.status}: {' '.join(shown)}  ({run})")
        elif m.status == "failed":
            say(f"  failed: {' '.join(shown)}: {m.error or 'see its run folder'}")
    folder = display_path(found.sweep_dir)
    say(f"sweep folder: {folder}")
    unfinished = found.expected > counts.get("completed", 0) + counts.get("failed", 0)
    if outcome.interrupted or unfinished:
        say(f"continue it with: peftlab sweep --continue {folder}")
    elif counts.get("failed"):
        say(f"after a fix, `peftlab sweep --continue {folder}` re-runs the failed members")
    if counts.get("completed"):
        say(f"compare the runs with: peftlab compare {folder}")


def _exit(outcome) -> None:
    from peftlab.cli.common import err_console

    if outcome.interrupted:
        err_console.print("interrupted", highlight=False)
        raise SystemExit(130)
    if outcome.state.status != "completed":
        raise SystemExit(1)


def say(message: str) -> None:
    """One plain line: no markup, highlighting or wrapping (paths and overrides stay copyable)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)

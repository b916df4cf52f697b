"""``peftlab sweep [OVERRIDES...]``: many runs from Hydra's multirun syntax, into a sweep folder."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console


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
        help="continue a stopped sweep (runs/sweeps/<name>/vN): run only the members that did not complete",
    ),
    name: Optional[str] = typer.Option(None, "--name", help="sweep folder name (default: the swept keys)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the members and exit; create nothing"),
    config_dir: Optional[List[str]] = typer.Option(None, "--config-dir", help="extra config folder(s) searched after the shipped ones"),
) -> None:
    """Run a grid (or a search) of trainings through Hydra's sweepers and launchers.

    Every member is an ordinary run folder; the sweep folder records the grid,
    each member's overrides and its run. Compare them with `peftlab compare
    <sweep folder>`; continue a stopped sweep with `--continue <sweep folder>`.
    Exit code 0 when every member completed, 1 when some failed, 2 for a
    mistake in the command, 130 when interrupted.
    """
    from peftlab import sweep as sw
    from peftlab.errors import UserError

    overrides = list(overrides or [])
    if continue_ is not None:
        if name or dry_run or config_dir:
            raise UserError("--continue takes only --jobs and hydra.* overrides: the rest is stored in the sweep")
        task = [o for o in overrides if not sw._is_hydra(o)]
        if task:
            raise UserError(
                f"--continue runs the sweep's own members; '{task[0]}' cannot change them "
                f"(start a new sweep instead; only hydra.* / hydra/ overrides are allowed here)"
            )
        outcome = sw.resume(continue_, jobs=jobs, hydra_overrides=overrides, announce=say)
    else:
        plan = sw.plan(overrides, jobs=jobs, config_dirs=config_dir or [], name=name)
        if dry_run:
            say(f"sweep {plan.name}: {plan.describe()}")
            for i, member in enumerate(plan.members or []):
                say(f"  [{i + 1}] {' '.join(member)}")
            return
        outcome = sw.start(plan, argv=["peftlab", *sys.argv[1:]], announce=say)
    _report(outcome)


def _report(outcome) -> None:
    from peftlab.cli.common import err_console

    data = outcome.data
    members = data.get("members") or []
    counts = outcome.counts
    parts = [f"{counts[k]} {k}" for k in ("completed", "failed", "interrupted", "running", "pending", "missing") if counts.get(k)]
    folder = _display(outcome.sweep_dir)
    say(f"sweep {data.get('name')}/{data.get('version')}: {', '.join(parts) or 'no runs'} "
                  f"of {max(len(members), int(data.get('count') or 0))}")
    swept = set(data.get("swept") or [])
    for m in members:
        if m.get("status") == "failed":
            err = m.get("error") or "see its run folder"
            shown = [o for o in m.get("overrides") or [] if o.partition("=")[0].lstrip("+~") in swept]
            say(f"  failed: {' '.join(shown or m.get('overrides') or [])}: {err}")
    say(f"sweep folder: {folder}")
    unfinished = [m for m in members if m.get("status") not in ("completed", "failed")]
    if outcome.interrupted or unfinished or data.get("status") in ("interrupted", "crashed"):
        say(f"continue it with: peftlab sweep --continue {folder}")
    elif counts.get("failed"):
        say(f"after a fix, `peftlab sweep --continue {folder}` re-runs the failed members")
    if counts.get("completed"):
        say(f"compare the runs with: peftlab compare {folder}")
    if outcome.interrupted:
        err_console.print("interrupted", highlight=False)
        raise SystemExit(130)
    if counts.get("completed", 0) < len(members) or data.get("status") != "completed":
        raise SystemExit(1)


def say(message: str) -> None:
    """One plain line: no markup, highlighting or wrapping (paths and overrides stay copyable)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def _display(path) -> str:
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

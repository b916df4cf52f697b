"""``peftlab study [OVERRIDES...] --tune KEY=SPEC``: tune every configuration on validation, re-run the best."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import RUNS_DIR_HELP, console, with_runs_dir

DEFAULT_TRIALS = 6
DEFAULT_SEEDS = 3


@app.command("study")
def study_command(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="the configurations, in sweep syntax (e.g. method=lora,pissa,dora method.rank=8), and fixed "
        "overrides; hydra/launcher=... passes through"),
    tune: Optional[List[str]] = typer.Option(
        None, "--tune", metavar="KEY=SPEC",
        help="a key to tune on validation: tag(log,interval(lo,hi)), interval(lo,hi), or a list a,b,c; repeatable"),
    trials: Optional[int] = typer.Option(
        None, "--trials", help=f"values tried per configuration, from each interval [default: {DEFAULT_TRIALS}]"),
    seeds: Optional[int] = typer.Option(
        None, "--seeds", help=f"final runs per configuration at its chosen setting [default: {DEFAULT_SEEDS}]"),
    tune_seed: Optional[int] = typer.Option(
        None, "--tune-seed", help="the seed of the tuning runs; final seeds follow it [default: 0]"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="run N runs in parallel (joblib launcher)"),
    name: Optional[str] = typer.Option(None, "--name", help="study folder name (default: the swept keys)"),
    continue_: Optional[str] = typer.Option(
        None, "--continue", metavar="STUDY",
        help="continue a stopped study (runs/studies/<name>/vN, or <name>): only the runs it still needs"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the configurations, values and run counts; create nothing"),
    config_dir: Optional[List[str]] = typer.Option(None, "--config-dir", help="extra config folder(s)"),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """A fair comparison: the same tuning budget for every configuration, chosen on validation, then seeds.

    1. Every configuration (method x rank x any swept key) runs every value of the
       tuned keys at the tuning seed; its best setting is chosen on the validation
       metric. 2. Each best setting runs again with --seeds fresh seeds. 3. `peftlab
       compare <study folder>` reports test mean, std, 95% confidence interval and
       Welch's test against the best configuration; --plot adds the sensitivity curve.
    Exit code 0 when every run completed, 1 when some failed, 2 for a mistake in the
    command, 130 when interrupted (continue with --continue).
    """
    from peftlab import study
    from peftlab.errors import UserError

    overrides = list(overrides or [])
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
    if continue_ is not None:
        given = {"overrides": overrides, "--tune": tune, "--name": name, "--config-dir": config_dir, "--dry-run": dry_run,
                 "--trials": trials is not None, "--seeds": seeds is not None, "--tune-seed": tune_seed is not None}
        if any(given.values()):
            named = ", ".join(k for k, v in given.items() if v)
            raise UserError(f"--continue takes only --jobs and --runs-dir ({named} given): the rest is stored in "
                            "the study; start a new study to change it")
        outcome = study.continue_study(continue_, jobs=jobs, runs_dir=runs_dir, announce=say)
    else:
        sp = study.plan_study(with_runs_dir(overrides, runs_dir), list(tune or []),
                              trials=DEFAULT_TRIALS if trials is None else trials,
                              seeds=DEFAULT_SEEDS if seeds is None else seeds, tune_seed=tune_seed or 0,
                              jobs=jobs, name=name, config_dirs=config_dir or [])
        if dry_run:
            for line in sp.describe():
                say(line)
            say(f"study folder: {sp.tuning.runs_root / 'studies' / sp.name}/v<N>")
            return
        outcome = study.start_study(sp, config_dirs=config_dir or [], jobs=jobs,
                                    argv=["peftlab", *sys.argv[1:]], announce=say)
    _report(outcome)


def _report(outcome) -> None:
    from peftlab.cli.common import display_path, err_console

    where = display_path(outcome.study_dir)
    say(f"study folder: {where}")
    if outcome.interrupted:
        say(f"continue it with: peftlab study --continue {where}")
        err_console.print("interrupted", highlight=False)
        raise SystemExit(130)
    if outcome.final_sweep is not None:
        say(f"compare the final runs with: peftlab compare {where}")
    if outcome.failed:
        say(f"{outcome.failed} run(s) failed (a failed tuning run counts as that setting's result)")
        raise SystemExit(1)


def say(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)

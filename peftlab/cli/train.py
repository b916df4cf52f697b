"""``peftlab train [OVERRIDES...]``: train one run (or resume one) into a run folder."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import RUNS_DIR_HELP, console, err_console, with_runs_dir


@app.command("train", context_settings={"allow_extra_args": False})
def train_command(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Hydra overrides, e.g. method=pissa method.rank=16 trainer.max_steps=200 seed=1"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the resolved config, parameter counts and memory; do not train"),
    config_dir: Optional[List[str]] = typer.Option(None, "--config-dir", help="extra config folder(s) searched before the shipped ones"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help=f"{RUNS_DIR_HELP}; the same as runs_dir=..."),
) -> None:
    """Train one run on the composed config; `resume=RUN` continues a stopped run."""
    from peftlab.config import choices, compose, search_path

    overrides = with_runs_dir(list(overrides or []), runs_dir)
    cfg = compose(overrides, config_dir or [])
    chosen = choices(overrides, search_path(config_dir or []))
    if dry_run:
        _dry_run(cfg)
        return
    from peftlab.errors import RunInterrupted
    from peftlab.train import train

    from peftlab.processes import launched_rank

    speaks = launched_rank() == 0  # under a launcher, one process reports for the run
    try:
        run = train(cfg, overrides=overrides, argv=sys.argv, choices=chosen, show_progress=not quiet)
    except RunInterrupted as stop:
        if speaks:
            _print_interrupted(stop)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        if speaks:
            err_console.print("interrupted before training started: nothing was written", highlight=False)
        raise typer.Exit(130) from None
    if speaks:
        _print_result(run)


def _print_interrupted(stop) -> None:
    """Where the run stopped and the exact command that continues it."""
    import shlex
    from pathlib import Path

    path = Path(stop.run_path)
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    if stop.checkpoint is None:
        err_console.print(f"interrupted ({stop.reason}) before the first checkpoint: {shown} cannot be resumed; "
                          f"start it again", highlight=False, soft_wrap=True)
        return
    err_console.print(f"interrupted ({stop.reason}) at step {stop.step} of {stop.total}; checkpoint saved in "
                      f"{stop.checkpoint}", highlight=False, soft_wrap=True)
    err_console.print(f"resume with: peftlab train {shlex.quote('resume=' + shown)}", highlight=False, soft_wrap=True)


def _dry_run(cfg) -> None:
    from omegaconf import OmegaConf
    from rich.table import Table

    from peftlab.experiment import build_experiment, count_parameters, parameter_table

    console.print(OmegaConf.to_yaml(cfg, resolve=True), highlight=False)
    exp = build_experiment(cfg, with_data=False)
    table = Table(title="parameters by module type", title_justify="left")
    for col in ("module", "trainable", "total"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for row in parameter_table(exp.model):
        table.add_row(row["module"], f"{row['trainable']:,}", f"{row['total']:,}")
    trainable, total = count_parameters(exp.model)
    table.add_row("[bold]all", f"[bold]{trainable:,}", f"[bold]{total:,}")
    console.print(table)
    from peftlab.memory import describe

    console.print(describe(exp), highlight=False)


def _print_result(run) -> None:
    from rich.table import Table

    summary = run.summary
    table = Table(title=f"run {run.name}/{run.version}: {run.status}", title_justify="left")
    table.add_column("split")
    key = summary.get("metric")
    shown = [key, "accuracy", "f1_macro", "exact_match", "loss", "perplexity"]
    metrics = [k for k in dict.fromkeys(shown) if k and k in (summary.get("test") or {})]
    for m in metrics:
        table.add_column(m, justify="right")
    selected = summary.get("selected_step")
    for label, values in (("validation (best)", summary.get("best_validation") or {}),
                          ("validation (final)", summary.get("final_validation") or {}),
                          (f"test (step {selected})" if selected is not None else "test", summary.get("test") or {})):
        table.add_row(label, *[f"{values[m]:.4f}" if isinstance(values.get(m), (int, float)) else "-" for m in metrics])
    console.print(table)
    console.print(
        f"trainable params {summary.get('trainable_params', 0):,} of {summary.get('total_params', 0):,}; "
        f"{summary.get('steps', 0)} steps in {summary.get('wall_time_s', 0):.1f}s, "
        f"{summary.get('tokens_per_s', 0):.0f} tokens/s"
    )
    console.print(f"run folder: [bold]{run.path}[/bold]")

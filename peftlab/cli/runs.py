"""``peftlab runs``: a table of the runs in the store, newest first (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from peftlab import runs as store
from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option, where_option
from peftlab.differences import differing_keys, short_names, shown_value
from peftlab.run_files import run_problem
from peftlab.where import filter_runs

DEFAULT_LIMIT = 50
RUN_MIN_WIDTH = 8  # the run column (name/version) folds down to this, the others never do
RUN_BUDGET = 20  # the run column's width kept free before settings columns are added (longer labels fold)
COLUMN_GAP = 2  # what the table puts between two columns
STATUS_STYLE = {
    "running": "yellow",
    "completed": "green",
    "failed": "red",
    "interrupted": "magenta",
}


# --------------------------------------------------------------------------- the table


def status_text(run: store.Run) -> str:
    """The run's status with rich colour markup; a dead "running" run shows as stale."""
    status = run.status
    if status == "running" and store.is_stale(run):
        return "[red]running (stale)[/red]"
    style = STATUS_STYLE.get(status, "dim")
    return f"[{style}]{escape(status)}[/{style}]"


def method_name(run: store.Run, config: dict | None = None) -> str:
    """The method option name recorded at launch, else the short class name of method._target_."""
    choice = (run.meta.get("choices") or {}).get("method")
    if choice:
        return str(choice)
    config = run.config if config is None else config
    target = (config.get("method") or {}).get("_target_") if isinstance(config.get("method"), dict) else None
    return str(target).rpartition(".")[2] if target else "-"


def key_metric(run: store.Run, config: dict | None = None) -> tuple[str, Any, str]:
    """``(metric, value, split)``: the test value of trainer.metric, else the last validation value.

    split is "test", "val" or "" (value None when the run has neither).
    """
    config = run.config if config is None else config
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    summary = run.summary
    metric = str(summary.get("metric") or (trainer or {}).get("metric") or "accuracy")
    test = summary.get("test")
    if isinstance(test, dict) and test.get(metric) is not None:
        return metric, test[metric], "test"
    for key in ("final_validation", "validation", "best_validation", "best"):
        node = summary.get(key)
        if isinstance(node, dict) and node.get(metric) is not None:
            return metric, node[metric], "val"
    return metric, None, ""


def fmt(value: Any) -> str:
    """Numbers compactly (4 significant digits), everything else as text."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@app.command("runs")
def runs_command(
    runs_dir: Optional[str] = runs_dir_option(),
    where: Optional[List[str]] = where_option(),
    show_all: bool = typer.Option(False, "--all", "-a", help=f"list every run, not only the {DEFAULT_LIMIT} newest"),
) -> None:
    """List runs (name/version), newest first: status, method, the settings that differ between them, key metric, age.

    A column is shown for each setting that differs between the listed runs
    (dataset, rank, lr, seed, ...: the group choices and the keys you typed), as
    many as the terminal's width allows; sweep members show their sweep and
    member index. --where filters as `peftlab compare --where` does.
    """
    root = store.runs_root(runs_dir)
    runs = store.list_runs(root)
    if not runs:
        console.print(
            f"no runs under {escape(str(root))} yet; start one with `peftlab train` "
            f"(e.g. peftlab train method=lora)",
            highlight=False,
        )
        return
    runs = filter_runs(runs, where or [])
    if not runs:
        console.print(f"no runs under {escape(str(root))} match {escape(' '.join(where or []))}", highlight=False)
        return
    shown = runs if show_all else runs[:DEFAULT_LIMIT]
    damaged = {run: problem for run in shown if (problem := run_problem(run)) is not None}
    table, hidden = _table(shown, root, damaged, console.width)
    console.print(table)
    if hidden:
        console.print(f"[dim]also differ: {escape(', '.join(hidden))} (a wider terminal shows them)[/dim]")
    if len(shown) < len(runs):
        console.print(f"[dim]showing the {len(shown)} newest of {len(runs)} runs; --all lists every run[/dim]")
    _report_damage(damaged)


def _metric_cells(shown: list[store.Run]) -> tuple[str, list[str]]:
    """The key metric's header and each run's cell (test value, else validation marked "(val)")."""
    found = [key_metric(run, run.config) for run in shown]
    metrics = {metric for metric, _, _ in found}
    one_metric = len(metrics) == 1
    cells = []
    for metric, value, split in found:
        cell = "-" if value is None else fmt(value)
        if value is not None and not one_metric:
            cell = f"{metric} {cell}"
        if value is not None and split == "val":
            cell += " (val)"
        cells.append(cell)
    return (next(iter(metrics)) if one_metric else "key metric"), cells


def sweep_cell(run: store.Run) -> str:
    """``name/vN#i`` for a sweep member (i: its member index), else "-"."""
    sweep = run.sweep
    if sweep is None:
        return "-"
    return f"{sweep.get('name')}/{sweep.get('version')}#{sweep.get('member')}"


def _fitting_keys(shown: list[store.Run], used: int, width: int) -> tuple[list[str], list[str]]:
    """The differing keys whose columns fit beside the others in ``width``, and those left out."""
    keys = differing_keys(shown)
    headers = short_names(keys)
    fitting, hidden = [], []
    for key in keys:
        need = max([len(headers[key])] + [len(shown_value(r, key)) for r in shown]) + COLUMN_GAP
        if used + need <= width:
            fitting.append(key)
            used += need
        else:
            hidden.append(key)
    return fitting, hidden


def _table(shown: list[store.Run], root: Path, damaged: dict[store.Run, str], width: int) -> tuple[Table, list[str]]:
    header, metric_cells = _metric_cells(shown)
    sweeps = [sweep_cell(run) for run in shown]
    has_sweeps = any(cell != "-" for cell in sweeps)
    statuses = ["damaged" if run in damaged else Text.from_markup(status_text(run)).plain for run in shown]
    widths = [min(RUN_BUDGET, max(len(r.label) for r in shown)), max(6, *map(len, statuses)),
              max(6, *(len(method_name(r, r.config)) for r in shown)), max(map(len, [header, *metric_cells])),
              max(3, *(len(store.age(r.started_at)) for r in shown))] + ([max(map(len, sweeps))] if has_sweeps else [])
    keys, hidden = _fitting_keys(shown, sum(widths) + COLUMN_GAP * (len(widths) - 1), width)
    headers = short_names(keys)

    table = Table(title=f"runs under {escape(str(root))}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    # Only the run column folds on a narrow terminal; the short ones keep their width.
    table.add_column("run", style="bold cyan", overflow="fold", min_width=RUN_MIN_WIDTH)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("method", no_wrap=True, min_width=6)
    for key in keys:
        table.add_column(escape(headers[key]), no_wrap=True, justify="right")
    if has_sweeps:
        table.add_column("sweep", no_wrap=True)
    table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    table.add_column("age", justify="right", no_wrap=True, min_width=3)
    for run, metric_cell, sweep in zip(shown, metric_cells, sweeps):
        table.add_row(
            escape(run.label),
            "[red]damaged[/red]" if run in damaged else status_text(run),
            escape(method_name(run, run.config)),
            *[escape(shown_value(run, key)) for key in keys],
            *([escape(sweep)] if has_sweeps else []),
            escape(metric_cell),
            store.age(run.started_at),
        )
    return table, hidden


def _report_damage(damaged: dict[store.Run, str]) -> None:
    """The listing shows every run; damaged folders then make it one error line and exit code 2."""
    from peftlab.errors import UserError

    if not damaged:
        return
    first, *others = damaged.values()
    more = "" if not others else f" ({len(others)} more damaged: {', '.join(r.label for r in list(damaged)[1:])})"
    raise UserError(first + more)

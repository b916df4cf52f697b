"""``peftlab runs``: a table of the runs in the store, newest first (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from peftlab import runs as store
from peftlab.cli.app import app
from peftlab.cli.common import console
from peftlab.run_files import run_problem

DEFAULT_LIMIT = 50
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
    runs_dir: Optional[str] = typer.Option(
        None, "--runs-dir", help="run store to list (default: $PEFTLAB_RUNS_DIR or ./runs)"
    ),
    show_all: bool = typer.Option(False, "--all", "-a", help=f"list every run, not only the {DEFAULT_LIMIT} newest"),
) -> None:
    """List runs, newest first: status, method, key metric and age."""
    root = store.runs_root(runs_dir)
    runs = store.list_runs(root)
    if not runs:
        console.print(
            f"no runs under {escape(str(root))} yet; start one with `peftlab train` "
            f"(e.g. peftlab train method=lora)",
            highlight=False,
        )
        return
    shown = runs if show_all else runs[:DEFAULT_LIMIT]
    damaged = {run: problem for run in shown if (problem := run_problem(run)) is not None}
    console.print(_table(shown, root, damaged))
    if len(shown) < len(runs):
        console.print(f"[dim]showing the {len(shown)} newest of {len(runs)} runs; --all lists every run[/dim]")
    _report_damage(damaged)


def _table(shown: list[store.Run], root: Path, damaged: dict[store.Run, str]) -> Table:
    rows = []
    metrics = set()
    for run in shown:
        config = run.config
        metric, value, split = key_metric(run, config)
        metrics.add(metric)
        rows.append((run, config, metric, value, split))
    one_metric = len(metrics) == 1
    header = next(iter(metrics)) if one_metric else "key metric"

    table = Table(
        title=f"runs under {escape(str(root))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    # Only the name column folds on a narrow terminal; the short ones keep their width.
    table.add_column("name", style="bold cyan", overflow="fold", min_width=8)
    table.add_column("version", no_wrap=True, min_width=7)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("method", no_wrap=True, min_width=6)
    table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    table.add_column("age", justify="right", no_wrap=True, min_width=4)
    for run, config, metric, value, split in rows:
        if value is None:
            shown_value = "-"
        else:
            shown_value = fmt(value)
            if not one_metric:
                shown_value = f"{metric} {shown_value}"
            if split == "val":
                shown_value += " (val)"
        table.add_row(
            escape(run.name),
            escape(run.version),
            "[red]damaged[/red]" if run in damaged else status_text(run),
            escape(method_name(run, config)),
            escape(shown_value),
            store.age(run.started_at),
        )
    return table


def _report_damage(damaged: dict[store.Run, str]) -> None:
    """The listing shows every run; damaged folders then make it one error line and exit code 2."""
    from peftlab.errors import UserError

    if not damaged:
        return
    first, *others = damaged.values()
    more = "" if not others else f" ({len(others)} more damaged: {', '.join(r.label for r in list(damaged)[1:])})"
    raise UserError(first + more)

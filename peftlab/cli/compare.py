"""``peftlab compare PATHS...``: runs side by side (table, plots, HTML report). No torch."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console

FORMATS = ("table", "markdown", "csv", "json")


@app.command("compare")
def compare_command(
    paths: List[str] = typer.Argument(..., help="run folders, sweep folders, folders of runs, or globs"),
    metric: Optional[str] = typer.Option(None, "--metric", "-m", help="metric to compare (default: the runs' trainer.metric)"),
    sort: Optional[str] = typer.Option(
        None, "--sort", help="metric | val | params | time | speed | memory | intruders | <swept key>; '-' reverses"
    ),
    where: Optional[List[str]] = typer.Option(
        None, "--where", "-w", help="filter, repeatable: method=lora, method=lora,pissa, method.rank>=8"
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table | markdown | csv | json"),
    plot_dir: Optional[Path] = typer.Option(None, "--plot", help="write PNG figures to this folder"),
    html_file: Optional[Path] = typer.Option(None, "--html", help="write a self-contained HTML report"),
    include_all: bool = typer.Option(False, "--all", help="include runs that are not completed"),
) -> None:
    """Compare runs: one row per configuration, seeds pooled as mean ± std.

    Rows are configurations (the overrides without seed=); the columns that vary
    across rows come first. The best row is marked, and rows within noise of it
    (|mean_best - mean| <= std_best + std) are marked too.
    """
    from peftlab import compare as cmp
    from peftlab.errors import UserError, did_you_mean

    if fmt not in FORMATS:
        raise UserError(f"unknown --format '{fmt}'{did_you_mean(fmt, FORMATS)}: choose one of {', '.join(FORMATS)}")
    notes: list[str] = []
    records = cmp.collect(paths, notes=notes)
    if not records:
        raise UserError(f"no runs found in {', '.join(paths)} (a run folder holds meta.json)")
    kept, left_out = cmp.select(records, where=where or [], include_all=include_all)
    note = cmp.left_out_note(left_out)
    if note:
        notes.append(note)
    if not kept:
        why = f" matching {' '.join(where)}" if where else (" that completed" if left_out else "")
        raise UserError(f"no runs{why} in {', '.join(paths)}" + ("; --all includes unfinished runs" if left_out else ""))
    rows = cmp.group(kept, metric=metric, sort=sort)

    human = fmt == "table"
    if fmt == "table":
        title = f"{len(kept)} run(s), {len(rows)} configuration(s)"
        console.print(cmp.render_table(rows, title=title, width=console.width))
    else:
        text = {"markdown": cmp.to_markdown, "csv": cmp.to_csv, "json": cmp.to_json}[fmt](rows)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")

    def say(msg: str) -> None:
        if human:
            console.print(msg, style="dim", highlight=False)
        else:
            print(msg, file=sys.stderr)

    for n in notes:
        say(n)

    figures: list[Path] = []
    if plot_dir is not None:
        figures = cmp.plot(rows, plot_dir)
        say(f"wrote {len(figures)} figure(s) to {plot_dir}")
    if html_file is not None:
        if plot_dir is None:
            with tempfile.TemporaryDirectory(prefix="peftlab-compare-") as tmp:
                figures = cmp.plot(rows, tmp)
                cmp.html_report(rows, kept, figures, html_file, notes=notes)
        else:
            cmp.html_report(rows, kept, figures, html_file, notes=notes)
        say(f"wrote {html_file}")

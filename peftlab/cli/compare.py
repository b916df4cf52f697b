"""``peftlab compare PATHS...``: runs side by side (table, plots, HTML report). No torch."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option, where_option

FORMATS = ("table", "markdown", "csv", "json")


@app.command("compare")
def compare_command(
    paths: List[str] = typer.Argument(
        ..., help="run folders, sweep folders, folders of runs, globs, or names under --runs-dir (all versions)"
    ),
    metric: Optional[str] = typer.Option(
        None, "--metric", "-m",
        help="key metric: rows are ranked and marked by its validation value (default: the runs' trainer.metric)",
    ),
    sort: Optional[str] = typer.Option(
        None, "--sort",
        help="metric (= val, the ranking) | test (reporting order only: marks stay by validation) | params | time "
        "| speed | memory | intruders | n | <swept key>; '-' reverses (default: grid order)",
    ),
    where: Optional[List[str]] = where_option("method=lora, method=lora,pissa, 'method.rank>=8'"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | markdown | csv | json"),
    plot_dir: Optional[Path] = typer.Option(None, "--plot", help="write PNG figures to this folder"),
    html_file: Optional[Path] = typer.Option(None, "--html", help="write a self-contained HTML report"),
    include_all: bool = typer.Option(False, "--all", help="include runs that are not completed"),
    runs_dir: Optional[str] = runs_dir_option(),
) -> None:
    """Compare runs: one row per configuration, seeds pooled as mean ± std.

    Rows are configurations (the overrides without seed=); the columns that vary
    across rows come first. Rows are ranked and marked by validation <metric> at
    each run's selected checkpoint; test <metric> is reported at the selected
    checkpoint and never chooses. The best row is marked, and rows within noise
    of it (|mean_best - mean| <= std_best + std, on validation) are marked too.
    Notes below the table say what to keep in mind (runs left out, damaged
    files, different datasets, single seeds).
    """
    from peftlab import compare as cmp
    from peftlab.errors import UserError, did_you_mean

    if fmt not in FORMATS:
        raise UserError(f"unknown --format '{fmt}'{did_you_mean(fmt, FORMATS)}: choose one of {', '.join(FORMATS)}")
    _check_outputs(plot_dir, html_file)
    notes: list[str] = []
    kept = _kept_runs(cmp, paths, where or [], include_all, notes, runs_dir)
    rows = cmp.group(kept, metric=metric, sort=sort)
    notes += cmp.row_notes(rows)
    _print_rows(cmp, rows, fmt, title=f"{len(kept)} run(s), {len(rows)} configuration(s)", notes=notes)
    say = _say if fmt == "table" else _say_stderr
    for n in notes:
        say(n)
    _write_figures_and_report(cmp, rows, kept, plot_dir, html_file, notes, say, _studies(paths, runs_dir))


def _kept_runs(cmp, paths: List[str], where: List[str], include_all: bool, notes: list[str],
               runs_dir: Optional[str]) -> list:
    """The runs to compare; a UserError (with the notes, e.g. damaged files) when there are none."""
    from peftlab.errors import UserError

    records = cmp.collect(paths, notes=notes, runs_dir=runs_dir)
    if not records:
        why = f": {'; '.join(notes)}" if notes else " (a run folder holds meta.json)"
        raise UserError(f"no runs found in {', '.join(paths)}{why}")
    kept, left_out = cmp.select(records, where=where, include_all=include_all)
    note = cmp.left_out_note(left_out)
    if note:
        notes.append(note)
    if not kept:
        why = f" matching {' '.join(where)}" if where else (" that completed" if left_out else "")
        raise UserError(f"no runs{why} in {', '.join(paths)}" + ("; --all includes unfinished runs" if left_out else ""))
    return kept


def _print_rows(cmp, rows: list, fmt: str, title: str, notes: list[str]) -> None:
    if fmt == "table":
        console.print(cmp.render_table(rows, title=title, width=console.width))
        return
    if fmt == "json":
        text = cmp.to_json(rows, notes=notes)
    else:
        text = {"markdown": cmp.to_markdown, "csv": cmp.to_csv}[fmt](rows)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _say(msg: str) -> None:
    console.print(msg, style="dim", highlight=False, markup=False)  # a path may hold "[...]"


def _say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)  # stdout stays machine-readable


def _check_outputs(plot_dir: Optional[Path], html_file: Optional[Path]) -> None:
    """Where --plot and --html write must be a folder and a file: said before any work, in one line."""
    from peftlab.errors import UserError

    if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
        raise UserError(f"--plot {plot_dir} is a file: --plot takes a folder for the figures")
    if html_file is not None and html_file.is_dir():
        raise UserError(f"--html {html_file} is a folder: --html takes a file path, e.g. {html_file / 'report.html'}")
    for given, path in (("--plot", plot_dir), ("--html", html_file)):
        above = next((p for p in (path.parents if path is not None else ()) if p.exists()), None)
        if above is not None and not above.is_dir():
            raise UserError(f"{given} {path}: '{above}' is a file, so nothing can be written under it")


def _write_figures_and_report(cmp, rows, kept, plot_dir, html_file, notes, say, studies=()) -> None:
    figures: list[Path] = []
    if plot_dir is not None:
        figures = cmp.plot(rows, plot_dir) + _study_figures(studies, plot_dir)
        say(f"wrote {len(figures)} figure(s) to {plot_dir}")
    if html_file is None:
        return
    if plot_dir is None:
        with tempfile.TemporaryDirectory(prefix="peftlab-compare-") as tmp:
            cmp.html_report(rows, kept, cmp.plot(rows, tmp) + _study_figures(studies, Path(tmp)), html_file,
                            notes=notes)
    else:
        cmp.html_report(rows, kept, figures, html_file, notes=notes)
    say(f"wrote {html_file}")


def _studies(paths: List[str], runs_dir: Optional[str]) -> list[Path]:
    """The study folders among ``paths`` (their sensitivity curves go with the figures)."""
    from peftlab import runs
    from peftlab.study import is_study

    root = runs.runs_root(runs_dir)
    found = []
    for text in paths:
        for path in (Path(text).expanduser(), root / text):
            if is_study(path):
                found.append(path.resolve())
                break
    return found


def _study_figures(studies: list[Path], out: Path) -> list[Path]:
    from peftlab.study.sensitivity import plot_sensitivity

    figures = []
    for i, study_dir in enumerate(studies):
        target = Path(out) if len(studies) == 1 else Path(out) / f"study-{i + 1}"
        path = plot_sensitivity(study_dir, target)
        if path is not None:
            figures.append(path)
    return figures

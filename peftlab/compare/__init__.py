"""Compare runs: tables, plots and a self-contained HTML report.

Reads run folders only, through the run store's one reader
(:class:`peftlab.runs.Run`), and never imports torch, so ``peftlab compare``
starts fast and works on a machine that only holds copied run folders.

The pipeline::

    records = collect(paths, notes)                # runs, sweeps, parent folders, globs; damaged runs noted, left out
    kept, left_out = select(records, where=[...])  # completed runs, --where filters
    rows = group(kept, metric)                     # one row per configuration, seeds pooled, marked by validation
    notes += row_notes(rows)                       # ranking, different datasets, single seeds
    render_table(rows) / to_markdown / to_csv / to_json(rows, notes) / plot / html_report

Rows are ranked and marked by the validation metric of each run's selected
checkpoint; the test metric of that checkpoint is reported, never used to
choose (:mod:`~peftlab.compare.selection`).

One module per step: :mod:`~peftlab.compare.records` (``collect`` on
:mod:`peftlab.finding`, ``select`` on :mod:`peftlab.where`),
:mod:`~peftlab.compare.grouping` (configurations, mean ± std over seeds, the
noise rule, sorting), :mod:`~peftlab.compare.notes` (what the reader must
know), :mod:`~peftlab.compare.formats` (Markdown, CSV, JSON),
:mod:`~peftlab.compare.table` (the rich table, fitted to the console),
:mod:`~peftlab.compare.figures` (PNG figures) and :mod:`~peftlab.compare.html`
(the HTML report), on top of :mod:`peftlab.values` (scalar parsing).
rich, matplotlib and yaml are imported only by the functions that need them.
"""

from __future__ import annotations

from peftlab.compare.figures import plot
from peftlab.compare.formats import (
    caption,
    fmt_count,
    fmt_metric,
    fmt_stat,
    fmt_time,
    to_csv,
    to_json,
    to_markdown,
)
from peftlab.compare.grouping import (
    BEST_MARK,
    DEFAULT_METRIC,
    IGNORED_KEYS,
    LOWER_IS_BETTER,
    NOISE_MARK,
    NOISE_RULE,
    Row,
    default_metric,
    group,
    lower_is_better,
    mark_best,
    sort_rows,
)
from peftlab.compare.html import html_report
from peftlab.compare.notes import row_notes
from peftlab.compare.records import collect, left_out_note, select
from peftlab.compare.selection import Selected, selected_validation
from peftlab.compare.table import render_table
from peftlab.values import canonical
from peftlab.where import parse_where

__all__ = [
    "BEST_MARK",
    "DEFAULT_METRIC",
    "IGNORED_KEYS",
    "LOWER_IS_BETTER",
    "NOISE_MARK",
    "NOISE_RULE",
    "Row",
    "Selected",
    "canonical",
    "caption",
    "collect",
    "default_metric",
    "fmt_count",
    "fmt_metric",
    "fmt_stat",
    "fmt_time",
    "group",
    "html_report",
    "left_out_note",
    "lower_is_better",
    "mark_best",
    "parse_where",
    "plot",
    "render_table",
    "row_notes",
    "select",
    "selected_validation",
    "sort_rows",
    "to_csv",
    "to_json",
    "to_markdown",
]

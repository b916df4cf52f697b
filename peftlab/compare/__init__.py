"""Compare runs: tables, plots and a self-contained HTML report.

Reads run folders only (config.yaml, overrides.txt, meta.json, summary.json,
metrics.jsonl, analysis.json) and never imports torch, so ``peftlab compare``
starts fast and works on a machine that only holds copied run folders.

The pipeline::

    records = collect(paths)                       # runs, sweeps, parent folders, globs
    kept, left_out = select(records, where=[...])  # completed runs, --where filters
    rows = group(kept, metric)                     # one row per configuration, seeds pooled
    render_table(rows) / to_markdown / to_csv / to_json / plot / html_report

One module per step: :mod:`~peftlab.compare.records` (reading run folders,
``collect``, ``select`` and ``--where``), :mod:`~peftlab.compare.grouping`
(configurations, mean ± std over seeds, the noise rule, sorting),
:mod:`~peftlab.compare.formats` (rich table, Markdown, CSV, JSON),
:mod:`~peftlab.compare.figures` (PNG figures) and :mod:`~peftlab.compare.html`
(the HTML report), on top of :mod:`~peftlab.compare.values` (scalar parsing).
rich, matplotlib and yaml are imported only by the functions that need them.
"""

from __future__ import annotations

from peftlab.compare.figures import plot
from peftlab.compare.formats import (
    caption,
    fmt_count,
    fmt_stat,
    fmt_time,
    render_table,
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
from peftlab.compare.records import (
    RunRecord,
    collect,
    left_out_note,
    parse_where,
    select,
)
from peftlab.compare.values import canonical

__all__ = [
    "BEST_MARK",
    "DEFAULT_METRIC",
    "IGNORED_KEYS",
    "LOWER_IS_BETTER",
    "NOISE_MARK",
    "NOISE_RULE",
    "Row",
    "RunRecord",
    "canonical",
    "caption",
    "collect",
    "default_metric",
    "fmt_count",
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
    "select",
    "sort_rows",
    "to_csv",
    "to_json",
    "to_markdown",
]

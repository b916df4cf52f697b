"""Rendering rows: Markdown, CSV and JSON (the terminal table is :mod:`~peftlab.compare.table`).

The human formats (table, Markdown, and the HTML report's table) share
:func:`columns` and :func:`caption`; CSV and JSON carry the raw numbers. Rows
are ranked and marked by validation; the test metric, measured at each run's
selected checkpoint, is reported beside it and never decides a mark.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peftlab.compare.grouping import NOISE_MARK, NOISE_RULE, Row
from peftlab.compare.significance import ALPHA, verdict

#: Decimals of the key metric: fixed, so that a column lines up and 0.8 reads 0.8000 like its neighbours.
METRIC_DECIMALS = 4


def fmt_metric(v: float | None) -> str:
    """A key-metric value with :data:`METRIC_DECIMALS` decimals (very large values in 4 significant digits)."""
    if v is None:
        return "-"
    return f"{v:.{METRIC_DECIMALS}f}" if abs(v) < 1e6 else f"{v:.4g}"


def fmt_stat(mean: float | None, std: float | None, stacked: bool = False) -> str:
    """``0.8800 ± 0.0141`` (mean ± sample std; the mean alone for one seed); ``stacked`` puts ± on a second line."""
    if mean is None:
        return "-"
    if std is None:
        return fmt_metric(mean)
    sep = "\n" if stacked else " "
    return f"{fmt_metric(mean)}{sep}± {fmt_metric(std)}"


def fmt_count(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}" if not float(v).is_integer() else str(int(v))


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.3g} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


@dataclass(frozen=True)
class Column:
    """One column of the human formats.

    ``kind`` says how it may give way when space is short: "label" (the
    configuration: wraps), "metric" (validation/test mean ± std: never cut),
    "count" (n), "secondary" (dropped first), "mark" (★ best / ≈ best).
    """

    header: str
    cell: Callable[[Row], str]
    kind: str
    stat: Callable[[Row], tuple[float | None, float | None]] | None = None  # metric columns: (mean, std)


def _metric_column(header: str, stat: Callable[[Row], tuple[float | None, float | None]]) -> Column:
    return Column(header, lambda r: fmt_stat(*stat(r)), "metric", stat)


def _label_columns(rows: Sequence[Row]) -> list[Column]:
    """The swept keys (only those that differ between rows), or one "config" column when none does."""
    params = list(rows[0].params)
    if not params:
        return [Column("config", lambda r: r.label, "label")]
    return [Column(p, (lambda r, p=p: r.params[p]), "label") for p in params]


def columns(rows: Sequence[Row]) -> list[Column]:
    """The columns of the human formats (table, markdown, html), validation first: it ranks the rows."""
    if not rows:
        return []
    metric = rows[0].metric
    cols = _label_columns(rows) + [
        _metric_column(f"val {metric}", lambda r: (r.val_mean, r.val_std)),
        _metric_column(f"test {metric}", lambda r: (r.test_mean, r.test_std)),
        Column("n", lambda r: str(r.n), "count"),
        *_lr_column(rows),
        *_significance_columns(rows),
        Column("trainable", lambda r: fmt_count(r.trainable_params), "secondary"),
        Column("wall time", lambda r: fmt_time(r.wall_time_s), "secondary"),
        Column("tokens/s", lambda r: fmt_count(r.tokens_per_s), "secondary"),
        Column("peak MB", lambda r: fmt_count(r.peak_memory_mb), "secondary"),
    ]
    for name in regularizer_names(rows):
        cols.append(Column(name, (lambda r, n=name: _fmt_term(r.regularizers.get(n))), "secondary"))
    if any(r.intruders is not None for r in rows):
        cols.append(Column("intruders", lambda r: "-" if r.intruders is None else f"{r.intruders:.3g}", "secondary"))
    cols.append(Column("", lambda r: r.mark, "mark"))
    return cols


def fmt_learning_rates(values: Sequence[float]) -> str:
    """``2e-03``, or ``1e-04..2e-03`` when a configuration's runs trained at different rates."""
    if not values:
        return "-"
    return f"{values[0]:.0e}" if len(values) == 1 else f"{values[0]:.0e}..{values[-1]:.0e}"


def _lr_column(rows: Sequence[Row]) -> list[Column]:
    """The learning rate of each row, unless it is a swept parameter (then the label shows it)."""
    if not any(r.learning_rates for r in rows) or "optimizer.lr" in rows[0].params:
        return []
    return [Column("lr", lambda r: fmt_learning_rates(r.learning_rates), "secondary")]


def _significance_columns(rows: Sequence[Row]) -> list[Column]:
    """The test mean's 95% CI and the test against the best row, when some row has two seeds or more."""
    if not any(r.test_ci for r in rows):
        return []
    return [
        Column("test 95% CI", lambda r: "-" if r.test_ci is None else f"{fmt_metric(r.test_ci[0])}..{fmt_metric(r.test_ci[1])}",
               "secondary"),
        Column("p vs best", lambda r: "-" if r.p_vs_best is None else f"{r.p_vs_best:.2g}", "secondary"),
        Column("Holm p", _fmt_holm, "secondary"),
    ]


def _fmt_holm(r: Row) -> str:
    """The Holm-adjusted p and what it says: ``0.031 differs`` / ``0.42 n.d.`` (not distinguishable)."""
    if r.p_holm_vs_best is None:
        return "-"
    short = "differs" if verdict(r.p_holm_vs_best) == "differs" else "n.d."
    return f"{r.p_holm_vs_best:.2g} {short}"


def regularizer_names(rows: Sequence[Row]) -> list[str]:
    """The ``reg/<name>`` terms any row logged, in the order first seen."""
    return list(dict.fromkeys(k for r in rows for k in r.regularizers))


def _fmt_term(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def caption(rows: Sequence[Row]) -> str:
    """How to read the table: the ranking key, where test comes from, the noise rule."""
    if not rows:
        return ""
    r = rows[0]
    direction = "higher" if r.higher_is_better else "lower"
    return (
        f"Ranked and marked by validation {r.metric} ({direction} is better); "
        f"test {r.metric} reported at the selected checkpoint. "
        f"Mean ± sample std over seeds. {NOISE_MARK}: on validation, {NOISE_RULE}."
        + _significance_caption(rows)
    )


def _significance_caption(rows: Sequence[Row]) -> str:
    tests = sum(r.p_vs_best is not None for r in rows)
    if not tests:
        return ""
    return (f" p vs best: Welch's t test of the test values against the best row's; Holm p: the same adjusted "
            f"for the {tests} test{'s' if tests > 1 else ''} in this table (Holm), differs when < {ALPHA}, "
            "else n.d. (not distinguishable).")


def to_markdown(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table with the caption (ranking key, noise rule) below."""
    cols = columns(rows)
    if not cols:
        return ""

    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c.header) for c in cols) + " |",
        "|" + "|".join("---" if c.kind == "label" else "---:" for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(cell(c.cell(r)) for c in cols) + " |" for r in rows]
    lines += ["", f"_{caption(rows)}_", ""]
    return "\n".join(lines)


def _row_dict(r: Row) -> dict:
    return {
        **r.params,
        "config": r.label,
        "metric": r.metric,
        "val_mean": r.val_mean,  # the ranking key
        "val_std": r.val_std,
        "test_mean": r.test_mean,
        "test_std": r.test_std,
        "n": r.n,
        "learning_rates": r.learning_rates,
        "test_ci95": list(r.test_ci) if r.test_ci else None,
        "p_vs_best": r.p_vs_best,
        "hedges_g_vs_best": r.g_vs_best,
        "p_holm_vs_best": r.p_holm_vs_best,
        "verdict_vs_best": verdict(r.p_holm_vs_best) or None,
        "trainable_params": None if r.trainable_params is None else round(r.trainable_params),
        "total_params": None if r.total_params is None else round(r.total_params),
        "wall_time_s": r.wall_time_s,
        "tokens_per_s": r.tokens_per_s,
        "peak_memory_mb": r.peak_memory_mb,
        "intruders": r.intruders,
        **{name: r.regularizers.get(name) for name in r.regularizers},
        "best": r.best,
        "within_noise": r.within_noise,
        "mark": r.mark,
    }


def to_csv(rows: Sequence[Row]) -> str:
    """CSV with raw numbers: swept parameters, then statistics (empty cell = not available)."""
    if not rows:
        return ""
    dicts = [_row_dict(r) for r in rows]
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for d in dicts for k in d))  # rows may log different regularizer terms
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: ("" if v is None else ";".join(map(str, v)) if isinstance(v, list) else v) for k, v in d.items()})
    return buf.getvalue()


def to_json(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """JSON: metric, direction, ranking key, noise rule, swept parameters, rows (with seeds and run paths), notes."""
    out = {
        "metric": rows[0].metric if rows else None,
        "higher_is_better": rows[0].higher_is_better if rows else None,
        "ranked_by": "validation at the selected checkpoint (val_mean); test_mean is reported only",
        "noise_rule": NOISE_RULE,
        "swept": list(rows[0].params) if rows else [],
        "rows": [
            {**_row_dict(r), "seeds": r.seeds, "runs": [str(x.path) for x in r.records]} for r in rows
        ],
        "notes": [n for n in notes if n],
    }
    return json.dumps(out, indent=2, default=str)

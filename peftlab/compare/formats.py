"""Rendering rows: a rich table for the terminal, Markdown, CSV and JSON.

The human formats (table, Markdown, and the HTML report's table) share
:func:`columns` and :func:`caption`; CSV and JSON carry the raw numbers.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from peftlab.compare.grouping import NOISE_MARK, NOISE_RULE, Row


def _g(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def fmt_stat(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    if std is None:
        return _g(mean)
    return f"{_g(mean)} ± {_g(std, 2)}"


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


def columns(rows: Sequence[Row]) -> list[tuple[str, Any]]:
    """(header, row -> display string) for the human formats (table, markdown, html)."""
    if not rows:
        return []
    metric = rows[0].metric
    cols: list[tuple[str, Any]] = []
    params = list(rows[0].params)
    if params:
        cols += [(p, (lambda r, p=p: r.params[p])) for p in params]
    else:
        cols.append(("config", lambda r: r.label))
    cols += [
        (f"test {metric}", lambda r: fmt_stat(r.test_mean, r.test_std)),
        ("n", lambda r: str(r.n)),
        (f"best val {metric}", lambda r: fmt_stat(r.val_mean, r.val_std)),
        ("trainable", lambda r: fmt_count(r.trainable_params)),
        ("wall time", lambda r: fmt_time(r.wall_time_s)),
        ("tokens/s", lambda r: fmt_count(r.tokens_per_s)),
        ("peak MB", lambda r: fmt_count(r.peak_memory_mb)),
    ]
    if any(r.intruders is not None for r in rows):
        cols.append(("intruders", lambda r: "-" if r.intruders is None else f"{r.intruders:.3g}"))
    cols.append(("", lambda r: r.mark))
    return cols


def n_param_columns(rows: Sequence[Row]) -> int:
    """How many leading :func:`columns` name the configuration (the swept parameters, or "config")."""
    return max(len(rows[0].params), 1) if rows else 0


def caption(rows: Sequence[Row]) -> str:
    if not rows:
        return ""
    r = rows[0]
    direction = "higher" if r.higher_is_better else "lower"
    return (
        f"test {r.metric}: mean ± sample std over seeds ({direction} is better). "
        f"{NOISE_MARK}: {NOISE_RULE}."
    )


#: Columns dropped first (in this order) when the table is wider than the console.
_DROP_ORDER = ("peak MB", "tokens/s", "wall time", "trainable", "intruders", "best val")


def render_table(rows: Sequence[Row], title: str | None = None, width: int | None = None):
    """A rich Table of the rows (print it with a rich Console).

    The swept parameters and the test metric never wrap; in the mark column a
    row within noise of the best shows "≈ best" (the caption states the rule).
    With ``width`` (the console width), secondary columns that do not fit are
    left out and the caption names them.
    """
    from rich import box
    from rich.table import Table

    cols = columns(rows)
    n_left = n_param_columns(rows)
    cells = [[f(r) for _, f in cols] for r in rows]
    for r, row_cells in zip(rows, cells):
        if r.within_noise:
            row_cells[-1] = "≈ best"

    def need(i: int) -> int:
        return max([len(cols[i][0])] + [len(c[i]) for c in cells])

    keep = list(range(len(cols)))
    hidden: list[str] = []
    if width:
        for prefix in _DROP_ORDER:
            if sum(need(i) for i in keep) + 2 * (len(keep) - 1) <= width:
                break
            for i in list(keep):
                if i >= n_left and cols[i][0].startswith(prefix):
                    keep.remove(i)
                    hidden.append(cols[i][0])
    cap = caption(rows)
    if hidden:
        cap += f" Hidden at this width: {', '.join(hidden)} (widen the terminal or use --format markdown)."
    table = Table(
        title=title, title_justify="left", caption=cap, caption_justify="left",
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
    )
    for i in keep:
        head = cols[i][0]
        if i < n_left:
            table.add_column(head, style="cyan", no_wrap=True, min_width=min(need(i), 40))
        elif head == "":
            table.add_column(head, style="bold green", no_wrap=True)
        else:
            table.add_column(head, justify="right", no_wrap=True, min_width=need(i))
    for r, row_cells in zip(rows, cells):
        table.add_row(*(row_cells[i] for i in keep), style="bold" if r.best else None)
    return table


def to_markdown(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table with the noise rule as a note below."""
    cols = columns(rows)
    if not cols:
        return ""

    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    n_left = n_param_columns(rows)
    lines = [
        "| " + " | ".join(cell(h) for h, _ in cols) + " |",
        "|" + "|".join("---" if i < n_left else "---:" for i in range(len(cols))) + "|",
    ]
    lines += ["| " + " | ".join(cell(f(r)) for _, f in cols) + " |" for r in rows]
    lines += ["", f"_{caption(rows)}_", ""]
    return "\n".join(lines)


def _row_dict(r: Row) -> dict:
    return {
        **r.params,
        "config": r.label,
        "metric": r.metric,
        "test_mean": r.test_mean,
        "test_std": r.test_std,
        "n": r.n,
        "val_mean": r.val_mean,
        "val_std": r.val_std,
        "trainable_params": None if r.trainable_params is None else round(r.trainable_params),
        "total_params": None if r.total_params is None else round(r.total_params),
        "wall_time_s": r.wall_time_s,
        "tokens_per_s": r.tokens_per_s,
        "peak_memory_mb": r.peak_memory_mb,
        "intruders": r.intruders,
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
    w = csv.DictWriter(buf, fieldnames=list(dicts[0]), lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()


def to_json(rows: Sequence[Row]) -> str:
    """JSON: metric, direction, noise rule, swept parameters and rows (with seeds and run paths)."""
    out = {
        "metric": rows[0].metric if rows else None,
        "higher_is_better": rows[0].higher_is_better if rows else None,
        "noise_rule": NOISE_RULE,
        "swept": list(rows[0].params) if rows else [],
        "rows": [
            {**_row_dict(r), "seeds": r.seeds, "runs": [str(x.path) for x in r.records]} for r in rows
        ],
    }
    return json.dumps(out, indent=2, default=str)

"""The terminal table: rich, fitted to the console width without ever cutting the key metric.

The validation and test columns (mean ± std), n and the mark keep their full
width. When the table is wider than the console, in this order:

1. secondary columns are left out (peak MB, tokens/s, wall time, trainable,
   intruders, test 95% CI, p vs best, lr) until the table fits with the configuration columns wrapped to
   a comfortable width; the caption names what was left out;
2. the configuration columns (the swept keys, or "config") wrap, down to
   :data:`LABEL_MIN` characters;
3. mean and ± std stack on two lines in the metric columns.

Only a console too narrow even for that can make rich shrink a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peftlab.compare.formats import Column, caption, columns, fmt_stat
from peftlab.compare.grouping import Row

#: Secondary columns, in the order they are left out when the console is too narrow.
DROP_ORDER = ("peak MB", "tokens/s", "wall time", "trainable", "intruders", "test 95% CI", "p vs best", "lr")
#: The narrowest a configuration column wraps to.
LABEL_MIN = 10
#: The width configuration columns may wrap to before any secondary column is given up for them.
LABEL_COMFORT = 24
#: Characters rich adds per column here: one of padding and one of divider (or edge).
_PER_COLUMN = 2


@dataclass
class _Layout:
    """Which columns to show, how wide, and whether metric cells stack mean over std."""

    keep: list[int]
    widths: dict[int, int]
    stacked: bool
    hidden: list[str]


def _cell(col: Column, row: Row, stacked: bool) -> str:
    if col.kind == "mark" and row.within_noise:
        return "≈ best"  # the caption states the noise rule in full
    if stacked and col.stat is not None:
        return fmt_stat(*col.stat(row), stacked=True)
    return col.cell(row)


def _header(col: Column, stacked: bool) -> str:
    return col.header.replace(" ", "\n", 1) if stacked and col.kind == "metric" else col.header


def _width(text: str) -> int:
    from rich.cells import cell_len

    return max(cell_len(line) for line in text.split("\n"))


def _needs(cols: Sequence[Column], rows: Sequence[Row], stacked: bool) -> list[int]:
    """The width each column needs to show its header and every cell whole."""
    return [
        max([1, _width(_header(c, stacked))] + [_width(_cell(c, r, stacked)) for r in rows]) for c in cols
    ]


def _shrink(needs: list[int], floors: list[int], room: int) -> list[int] | None:
    """Widths no wider than ``needs`` that sum to at most ``room``, narrowing the widest first.

    None when even ``floors`` do not fit.
    """
    if sum(floors) > room:
        return None
    widths = list(needs)
    while sum(widths) > room:
        i = max((j for j in range(len(widths)) if widths[j] > floors[j]), key=lambda j: widths[j])
        widths[i] -= 1
    return widths


def _drop_secondary(cols: Sequence[Column], needs: list[int], width: int) -> tuple[list[int], list[str]]:
    """Leave out secondary columns (in :data:`DROP_ORDER`) until the table fits with comfortable labels."""
    keep = list(range(len(cols)))
    hidden: list[str] = []

    def fits() -> bool:
        total = sum(min(needs[i], LABEL_COMFORT) if cols[i].kind == "label" else needs[i] for i in keep)
        return total + _PER_COLUMN * len(keep) <= width

    # Regularizer terms (reg/<name>) go after the speed and memory columns, before the rest.
    extra = [c.header for c in cols if c.kind == "secondary" and c.header not in DROP_ORDER]
    for name in list(DROP_ORDER[:2]) + extra + list(DROP_ORDER[2:]):
        if fits():
            break
        for i in [i for i in keep if cols[i].kind == "secondary" and cols[i].header == name]:
            keep.remove(i)
            hidden.append(name)
    return keep, hidden


def _fit(cols: Sequence[Column], rows: Sequence[Row], width: int | None) -> _Layout:
    """The layout that shows every metric whole in ``width`` columns (all columns when width is None)."""
    if not width:
        needs = _needs(cols, rows, stacked=False)
        return _Layout(list(range(len(cols))), dict(enumerate(needs)), False, [])
    layout = None
    for stacked in (False, True):
        needs = _needs(cols, rows, stacked)
        keep, hidden = _drop_secondary(cols, needs, width)
        labels = [i for i in keep if cols[i].kind == "label"]
        fixed = sum(needs[i] for i in keep if i not in labels) + _PER_COLUMN * len(keep)
        floors = [min(needs[i], LABEL_MIN) for i in labels]
        label_widths = _shrink([needs[i] for i in labels], floors, width - fixed)
        widths = {i: needs[i] for i in keep}
        widths.update(zip(labels, label_widths or floors))
        layout = _Layout(keep, widths, stacked, hidden)
        if label_widths is not None:
            return layout
    assert layout is not None
    return layout  # too narrow for anything: the stacked layout at its narrowest


def render_table(rows: Sequence[Row], title: str | None = None, width: int | None = None):
    """A rich Table of the rows (print it with a rich Console).

    With ``width`` (the console width), the table is fitted to it as the
    module docstring says, and the caption names the columns left out. In the
    mark column a row within noise of the best shows "≈ best" (the caption
    states the rule). Cells are plain text: a value such as ``[l2]`` is never
    read as markup.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cols = columns(rows)
    layout = _fit(cols, rows, width)
    cap = caption(rows)
    if layout.hidden:
        cap += f" Left out at this width: {', '.join(layout.hidden)} (widen the terminal or use --format markdown)."
    table = Table(
        title=title, title_justify="left", caption=cap, caption_justify="left",
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
    )
    for i in layout.keep:
        _add_column(table, cols[i], layout.widths[i], Text(_header(cols[i], layout.stacked)))
    for r in rows:
        cells = [Text(_cell(cols[i], r, layout.stacked)) for i in layout.keep]
        table.add_row(*cells, style="bold" if r.best else None)
    return table


def _add_column(table, col: Column, width: int, header) -> None:
    if col.kind == "label":  # wraps at spaces, folds a longer word
        table.add_column(header, style="cyan", width=width, overflow="fold")
    elif col.kind == "mark":
        table.add_column(header, style="bold green", width=width, no_wrap=True)
    else:
        table.add_column(header, justify="right", width=width, no_wrap=True)

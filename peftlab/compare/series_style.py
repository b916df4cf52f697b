"""Telling many series apart in one figure: a distinct look per series and a legend beside the plot.

A comparison of every method draws 19 lines or more. Matplotlib's default cycle
has 10 colours, so series 11 onwards would repeat the colours of 1 to 10 and be
told apart by nothing. Here series i takes colour ``i mod 10`` and, from the
eleventh on, another line style and marker, so no two of the first 40 look alike.
Above a few series the legend goes to the right of the axes, where it hides no data.
"""

from __future__ import annotations

from typing import Any

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
          "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
INSIDE_UP_TO = 6  # legends with more entries than this go beside the axes


def series_style(i: int) -> dict[str, Any]:
    """``color``, ``linestyle`` and ``marker`` of series ``i`` (0-based): unique for i < 40."""
    cycle = (i // len(COLORS)) % len(LINESTYLES)
    return {"color": COLORS[i % len(COLORS)], "linestyle": LINESTYLES[cycle], "marker": MARKERS[cycle]}


def place_legend(ax, fontsize: str = "small", title: str | None = None) -> None:
    """The legend inside the axes for a few entries; beside them (one column per 25 entries) for more."""
    n = len(ax.get_legend_handles_labels()[1])
    if n <= INSIDE_UP_TO:
        ax.legend(fontsize=fontsize, title=title)
        return
    ax.legend(fontsize=fontsize, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0, ncol=1 + (n - 1) // 25)

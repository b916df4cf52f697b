"""Many series in one figure stay apart: no two look alike, and the legend does not cover them."""

from __future__ import annotations

import pytest

from peftlab.compare.figures import plot
from peftlab.compare.series_style import INSIDE_UP_TO, series_style
from tests.fabricated_runs import fabricate_run, grouped_rows

pytestmark = pytest.mark.usefixtures("hermetic")


def test_the_first_forty_series_have_forty_looks():
    looks = {tuple(series_style(i).values()) for i in range(40)}
    assert len(looks) == 40
    assert series_style(0)["color"] != series_style(1)["color"]
    assert series_style(0)["color"] == series_style(10)["color"]  # same colour, so another line style and marker
    assert series_style(0)["linestyle"] != series_style(10)["linestyle"]


def _plotted(tmp_path, monkeypatch, methods: int) -> dict:
    from matplotlib.figure import Figure

    root = tmp_path / "runs"
    for i in range(methods):
        fabricate_run(root, f"m{i:02d}", 8, 0, 0.5 + 0.01 * i, version=1)
    saved: dict = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.__setitem__(path.name, fig))
    rows, _ = grouped_rows(root)
    plot(rows, tmp_path / "figs")
    return saved


def _legend_x0(fig) -> float:
    """Where the legend's anchor starts, in axes coordinates (0: inside, > 1: right of the axes)."""
    ax = fig.axes[0]
    return ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted()).x0


def test_nineteen_configurations_are_nineteen_distinct_lines_with_the_legend_beside_the_axes(tmp_path, monkeypatch):
    saved = _plotted(tmp_path, monkeypatch, 19)
    for name in ("val_accuracy.png", "loss_curves.png"):
        lines = saved[name].axes[0].get_lines()
        assert len(lines) == 19
        assert len({(ln.get_color(), ln.get_linestyle()) for ln in lines}) == 19, name
        assert _legend_x0(saved[name]) > 1.0, name
    params = saved["accuracy_vs_params.png"]
    assert len(params.axes[0].get_legend().get_texts()) == 19  # a legend for every marker


@pytest.mark.parametrize("methods", [1, INSIDE_UP_TO])
def test_a_few_configurations_keep_the_legend_inside(tmp_path, monkeypatch, methods):
    saved = _plotted(tmp_path, monkeypatch, methods)
    assert _legend_x0(saved["val_accuracy.png"]) == pytest.approx(0.0)

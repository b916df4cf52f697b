"""PNG figures of compared runs (matplotlib, imported only when plotting)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from peftlab.compare.grouping import Row, mean_std
from peftlab.compare.rank_figure import plot_ranks
from peftlab.compare.series_style import place_legend, series_style
from peftlab.runs import Run
from peftlab.values import as_number, canonical
from peftlab.errors import UserError


def _train_curve(records: Sequence[Run], key: str = "loss", split: str = "train"):
    """Steps, mean and std over seeds of ``key`` on ``split`` lines (std 0 where one seed)."""
    by_step: dict[float, list[float]] = {}
    for rec in records:
        for line in rec.metrics():
            if line.get("split") != split:
                continue
            step, v = as_number(line.get("step")), as_number(line.get(key))
            if step is None or v is None or not math.isfinite(v):
                continue
            by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    means, stds = [], []
    for s in steps:
        m, sd = mean_std(by_step[s])
        means.append(m)
        stds.append(sd or 0.0)
    return steps, means, stds


def plot(rows: Sequence[Row], out_dir: str | os.PathLike) -> list[Path]:
    """Write PNG figures to ``out_dir`` and return their paths.

    * ``loss_curves.png``: training loss per configuration, mean ± std band over seeds by step;
    * ``val_<metric>.png``: the validation metric over steps, when logged;
    * ``<metric>_vs_rank.png``: test metric against ``method.rank``, one line per method
      (and other swept values), when the rank varies;
    * ``<metric>_vs_params.png``: test metric against trainable parameters (log x);
    * ``ranks.png``: the rank each matrix ended with, per layer and module type, for runs
      whose method chose ranks per layer (see :mod:`peftlab.compare.rank_figure`).

    A series with a single point (one logged step, one evaluation) is drawn as a marker.
    Each series has its own colour and line style (:mod:`peftlab.compare.series_style`);
    above a few series the legend stands right of the axes, above ``MAX_LEGEND`` there is none.
    """
    try:
        from matplotlib.figure import Figure  # noqa: F401 - imported here to fail early and clearly
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError("plots need matplotlib: pip install 'peftlab[plots]'") from exc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if not rows:
        return []
    metric = rows[0].metric
    written = [
        _curves(rows, out, "loss", "train", "training loss", "loss_curves.png", "training loss (mean ± std over seeds)"),
        _curves(rows, out, metric, "validation", f"validation {metric}", f"val_{metric}.png",
                f"validation {metric} (mean ± std over seeds)"),
        _versus_rank(rows, out, metric),
        _versus_params(rows, out, metric),
    ]
    return [p for p in written if p is not None] + plot_ranks(rows, out)


MAX_LEGEND = 50  # more markers than this: the figure is read by position, a legend would be a wall of text


def _axes(size: tuple[float, float] = (6.5, 4.2)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot()


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: bool = True, grid: str = "major") -> Path:
    """Label, grid, legend, and save ``fig`` as ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which=grid)
    if legend:
        place_legend(ax)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _curves(rows: Sequence[Row], out: Path, key: str, split: str, ylabel: str, name: str, title: str) -> Path | None:
    """Mean ± std over seeds of ``key`` on ``split`` lines by step, one line per configuration."""
    fig, ax = _axes((7, 4.2))
    drew = False
    for i, r in enumerate(rows):
        steps, mean, std = _train_curve(r.records, key, split)
        if not steps:
            continue
        drew = True
        single = len(steps) == 1  # a line through one point is invisible
        style = series_style(i)
        (ln,) = ax.plot(steps, mean, label=f"{r.label} (n={len(r.records)})", lw=1.5, color=style["color"],
                        linestyle=style["linestyle"], marker=style["marker"] if single else None)
        if single:
            ax.errorbar(steps, mean, yerr=std, color=ln.get_color(), capsize=3, lw=1)
        else:
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(steps, lo, hi, color=ln.get_color(), alpha=0.2, lw=0)
    if not drew:
        return None
    return _save(fig, ax, out / name, "step", ylabel, title, legend=len(ax.get_lines()) <= MAX_LEGEND)


def _versus_rank(rows: Sequence[Row], out: Path, metric: str) -> Path | None:
    """Test metric against ``method.rank``, one line per method (+ the other swept values)."""
    ranks = [as_number(r.records[0].value("method.rank")) for r in rows]
    if len({x for x in ranks if x is not None}) <= 1:
        return None
    lines: dict[str, list[tuple[float, Row]]] = {}
    for r, x in zip(rows, ranks):
        if x is None or r.test_mean is None:
            continue
        others = [f"{k}={v}" for k, v in r.params.items() if k not in ("method", "method.rank")]
        method = r.params.get("method") or canonical(r.records[0].value("method"))
        lines.setdefault(" ".join([str(method)] + others), []).append((x, r))
    fig, ax = _axes()
    for i, (name, pts) in enumerate(sorted(lines.items())):
        pts.sort(key=lambda t: t[0])
        ax.errorbar([p[0] for p in pts], [p[1].test_mean for p in pts],
                    yerr=[p[1].test_std or 0.0 for p in pts], capsize=3, label=name, **series_style(i))
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    return _save(fig, ax, out / f"{metric}_vs_rank.png", "method.rank", f"test {metric}",
                 f"test {metric} vs rank (mean ± std over seeds)")


def _versus_params(rows: Sequence[Row], out: Path, metric: str) -> Path | None:
    """Test metric against trainable parameters (log x), one marker per configuration."""
    pts = [r for r in rows if r.trainable_params and r.test_mean is not None]
    if not pts:
        return None
    fig, ax = _axes()
    for i, r in enumerate(pts):
        style = series_style(i)
        ax.errorbar([r.trainable_params], [r.test_mean], yerr=[r.test_std or 0.0], capsize=3, label=r.label,
                    color=style["color"], marker=style["marker"])
    ax.set_xscale("log")
    return _save(fig, ax, out / f"{metric}_vs_params.png", "trainable parameters", f"test {metric}",
                 f"test {metric} vs trainable parameters", legend=len(pts) <= MAX_LEGEND, grid="both")

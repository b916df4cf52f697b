"""``ranks.png``: the rank each matrix ended with, per layer and module type (matplotlib, on demand).

Drawn for the configurations whose runs recorded per-matrix ranks
(``ranks.json``, written by methods that choose ranks per layer such as
AdaLoRA and EVA): one heatmap per configuration, module types as rows and
layers as columns, each cell the rank averaged over the configuration's seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftlab.compare.grouping import Row
from peftlab.rank_grid import mean_ranks, rank_grid

FILE = "ranks.png"
#: Panels drawn at most (configurations beyond are left out of the figure, and the title says so).
MAX_PANELS = 12


def rank_panels(rows: Sequence[Row]) -> list[tuple[str, dict[str, float]]]:
    """``(label, mean ranks)`` of each configuration whose runs recorded ranks."""
    panels = []
    for row in rows:
        ranks = mean_ranks([run.ranks for run in row.records])
        if ranks:
            panels.append((f"{row.label} (n={sum(1 for r in row.records if r.ranks)})", ranks))
    return panels


def plot_ranks(rows: Sequence[Row], out: Path) -> list[Path]:
    """Write ``out/ranks.png`` when any configuration recorded ranks; returns the paths written."""
    panels = rank_panels(rows)
    if not panels:
        return []
    from matplotlib.figure import Figure

    shown = panels[:MAX_PANELS]
    grids = [rank_grid(ranks) for _, ranks in shown]
    width = max(4.0, 1.0 + 0.45 * max(len(layers) for layers, _, _ in grids) + 2.0)
    heights = [0.9 + 0.35 * len(kinds) for _, kinds, _ in grids]
    fig = Figure(figsize=(width, sum(heights) + 0.6))
    axes = fig.subplots(len(shown), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    top = max(max(ranks.values()) for _, ranks in shown)
    image = None
    for ax, (label, _), (layers, kinds, cells) in zip(axes, shown, grids):
        values = [[cells.get((kind, layer), float("nan")) for layer in layers] for kind in kinds]
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=top)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 * top else "black")
        ax.set_xticks(range(len(layers)), layers, fontsize=8)
        ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(label, fontsize=9)
    more = f" (first {MAX_PANELS} of {len(panels)} configurations)" if len(panels) > MAX_PANELS else ""
    fig.suptitle(f"final rank per matrix, mean over seeds{more}", fontsize=10)
    fig.colorbar(image, ax=list(axes), label="rank", shrink=0.8)
    path = Path(out) / FILE
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return [path]

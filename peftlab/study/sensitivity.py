"""How forgiving each configuration is: the validation metric against the tuned value.

Drawn from the tuning runs (one seed per point), one line per configuration, the
chosen point circled. A flat curve means the configuration works over a wide
range of the tuned value; a sharp peak means it needs tuning to be used at all.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.compare.series_style import place_legend, series_style
from peftlab.study import folder
from peftlab.study.choose import curves, distinguishing
from peftlab.study.spec import Tuned
from peftlab.sweep import members
from peftlab.values import as_number


def plot_sensitivity(study_dir: Path, out_dir: Path) -> Path | None:
    """``sensitivity.png`` in ``out_dir`` for a study with one numeric tuned key; None otherwise."""
    from matplotlib.figure import Figure

    data = folder.read(study_dir)
    tuned = [Tuned.from_record(t) for t in data["tuned"]]
    tune_dir = folder.sweep_path(study_dir, data.get("tune_sweep"))
    if len(tuned) != 1 or tune_dir is None or not tune_dir.is_dir():
        return None
    key, metric = tuned[0].key, str(data["metric"])
    found = curves(members(tune_dir), [key], metric)
    chosen = {tuple(c["configuration"]): " ".join(c["setting"]) for c in data.get("chosen") or []}
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    drew = False
    labels, title = _legend_labels([list(c) for c in found])
    for i, (config, points) in enumerate(found.items()):
        pts = sorted((as_number(s.partition("=")[2]), v, s) for s, v in points if as_number(s.partition("=")[2]) is not None)
        if not pts:
            continue
        drew = True
        style = series_style(i)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=labels[i], ms=5, **style)
        best = [p for p in pts if p[2] == chosen.get(config)]
        if best:
            ax.plot([best[0][0]], [best[0][1]], marker="o", ms=13, mfc="none", mew=1.5, color=style["color"])
    if not drew:
        return None
    if tuned[0].log:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"validation {metric} (tuning seed)")
    ax.set_title(f"sensitivity to {key} (circled: chosen on validation)")
    ax.grid(alpha=0.3)
    place_legend(ax, title=title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sensitivity.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _legend_labels(configurations: list[list[str]]) -> tuple[list[str], str | None]:
    """Each configuration's label, and the legend's title when one key is all that differs.

    ``method=lora``, ``method=pissa``, ... read as ``lora``, ``pissa`` under the title ``method``.
    """
    labels = distinguishing(configurations)
    keys = {label.partition("=")[0] for label in labels}
    if len(keys) == 1 and all("=" in label and " " not in label for label in labels):
        return [label.partition("=")[2] for label in labels], keys.pop()
    return labels, None

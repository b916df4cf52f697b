"""Reading an experiment's run folders by arm: the pieces every experiment's summarize.py shares.

An experiment trains each arm (a named configuration) for several seeds, one run
folder per seed under ``RUNS/<arm>/v<N>``. Only completed runs count.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path


def mean_std(values: list[float | None], digits: int = 3) -> str:
    """``mean ± sample std`` of the values given (None skipped; the single value when n = 1, ``-`` when
    none), in significant digits when a value is too small for ``digits`` decimals."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    tiny = any(v and abs(v) < 10 ** -digits for v in values)
    fmt = f"{{:.{digits}g}}" if tiny else f"{{:.{digits}f}}"
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def completed_runs(root: Path, arms: list[str] | None = None) -> dict[str, list[Path]]:
    """Completed run folders by arm (all arms under ``root``, or only those named)."""
    found: dict[str, list[Path]] = defaultdict(list)
    for meta in sorted(root.glob("*/v*/meta.json")):
        arm = meta.parent.parent.name
        if (arms is None or arm in arms) and json.loads(meta.read_text()).get("status") == "completed":
            found[arm].append(meta.parent)
    return dict(found)


def curve(run: Path, split: str, key: str) -> dict[int, float]:
    """``{step: value}`` of one metric of one split from a run's metrics.jsonl."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r[key] for r in lines if r.get("split") == split and key in r}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def kept_validation(s: dict) -> dict:
    """The validation metrics of the weights the run kept (best or final, as the run selected)."""
    return s["best_validation" if s.get("selection") == "best" else "final_validation"]


def config_value(run: Path, dotted: str) -> str:
    """One value of the run's resolved config (e.g. ``optimizer.lr``), as text."""
    import yaml

    node = yaml.safe_load((run / "config.yaml").read_text())
    for part in dotted.split("."):
        node = node[part]
    return str(node)


def plot_mean_curves(arms: dict[str, list[Path]], split: str, key: str, ylabel: str, path: Path,
                     log: bool = False) -> None:
    """Each arm's metric curve averaged over its seeds (steps every seed has), one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in sorted(arms):
        curves = [curve(r, split, key) for r in arms[arm]]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if steps:
            ax.plot(steps, [statistics.mean(c[s] for c in curves) for s in steps], marker="." if len(steps) < 8 else None,
                    label=f"{arm} (n={len(curves)})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_table(arms: dict[str, list[Path]], order: list[str], validation_at: tuple[int, ...],
                   loss_at: tuple[int, ...]) -> None:
    """Markdown: per arm, its lr, seeds, kept test and validation accuracy, validation accuracy and
    training loss at the given steps (mean ± std over seeds)."""
    print("| arm | lr | seeds | test accuracy (kept) | validation accuracy (kept) | "
          + " | ".join(f"val acc @{s}" for s in validation_at) + " | "
          + " | ".join(f"train loss @{s}" for s in loss_at) + " |")
    print("|---|---|---|---|---|" + "---|" * (len(validation_at) + len(loss_at)))
    for arm in [a for a in order if a in arms]:
        runs = arms[arm]
        sums = [summary(r) for r in runs]
        losses = [curve(r, "train", "loss/task") for r in runs]
        accs = [curve(r, "validation", "accuracy") for r in runs]
        cells = [mean_std([c[s] for c in accs if s in c]) for s in validation_at]
        cells += [mean_std([c[s] for c in losses if s in c]) for s in loss_at]
        print(f"| {arm} | {config_value(runs[0], 'optimizer.lr')} | {len(runs)} | "
              f"{mean_std([s['test']['accuracy'] for s in sums])} | "
              f"{mean_std([kept_validation(s)['accuracy'] for s in sums])} | " + " | ".join(cells) + " |")

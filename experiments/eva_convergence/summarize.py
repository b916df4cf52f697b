"""Summarize the EVA-convergence runs: accuracy and loss per arm (mean ± std over seeds), curves.

Usage: python summarize.py RUNS_DIR OUT_DIR   (writes OUT_DIR/*.png; prints Markdown)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arms import completed_runs, config_value, curve, kept_validation, mean_std, plot_mean_curves, summary  # noqa: E402

ARMS = ["lora", "pissa", "eva", "lora-lr2e-3"]
LOSS_AT = (5, 10, 20, 30, 50, 100, 150)
VALIDATION_AT = (50, 100, 150)


def table(arms: dict[str, list[Path]]) -> None:
    print("| arm | lr | seeds | test accuracy (kept) | validation accuracy (kept) | "
          + " | ".join(f"val acc @{s}" for s in VALIDATION_AT) + " | "
          + " | ".join(f"train loss @{s}" for s in LOSS_AT) + " |")
    print("|---|---|---|---|---|" + "---|" * (len(VALIDATION_AT) + len(LOSS_AT)))
    for arm in [a for a in ARMS if a in arms]:
        runs = arms[arm]
        sums = [summary(r) for r in runs]
        losses = [curve(r, "train", "loss/task") for r in runs]
        accs = [curve(r, "validation", "accuracy") for r in runs]
        cells = [mean_std([c[s] for c in accs if s in c]) for s in VALIDATION_AT]
        cells += [mean_std([c[s] for c in losses if s in c]) for s in LOSS_AT]
        print(f"| {arm} | {config_value(runs[0], 'optimizer.lr')} | {len(runs)} | "
              f"{mean_std([s['test']['accuracy'] for s in sums])} | "
              f"{mean_std([kept_validation(s)['accuracy'] for s in sums])} | " + " | ".join(cells) + " |")


def main(root: Path, out: Path) -> None:
    arms = completed_runs(root, ARMS)
    table(arms)
    plot_mean_curves(arms, "train", "loss/task", "training loss (mean over seeds)", out / "loss_curves.png")
    plot_mean_curves(arms, "validation", "accuracy", "validation accuracy (mean over seeds)",
                     out / "validation_accuracy.png")
    print()
    print("![training loss](loss_curves.png) ![validation accuracy](validation_accuracy.png)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Summarize the EVA-convergence runs: accuracy and loss per arm (mean ± std over seeds), curves.

Usage: python summarize.py RUNS_DIR OUT_DIR   (writes OUT_DIR/*.png; prints Markdown)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arms import accuracy_table, completed_runs, plot_mean_curves  # noqa: E402

ARMS = ["lora", "pissa", "eva", "lora-lr2e-3"]
LOSS_AT = (5, 10, 20, 30, 50, 100, 150)
VALIDATION_AT = (50, 100, 150)


def main(root: Path, out: Path) -> None:
    arms = completed_runs(root, ARMS)
    accuracy_table(arms, ARMS, VALIDATION_AT, LOSS_AT)
    plot_mean_curves(arms, "train", "loss/task", "training loss (mean over seeds)", out / "loss_curves.png")
    plot_mean_curves(arms, "validation", "accuracy", "validation accuracy (mean over seeds)",
                     out / "validation_accuracy.png")
    print()
    print("![training loss](loss_curves.png) ![validation accuracy](validation_accuracy.png)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

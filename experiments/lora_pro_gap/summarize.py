"""Summarize the LoRA-Pro-gap runs: accuracy and loss per arm (mean ± std over seeds), curves.

Usage: python summarize.py RUNS_DIR OUT_DIR   (writes OUT_DIR/*.png; prints Markdown)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arms import accuracy_table, completed_runs, plot_mean_curves  # noqa: E402

ARMS = ["lora-lr2e-3", "lora_pro", "lora_pro-lr5e-4", "full"]


def main(root: Path, out: Path) -> None:
    arms = completed_runs(root, ARMS)
    accuracy_table(arms, ARMS, (50, 100, 150), (5, 10, 20, 30, 50, 100, 150))
    plot_mean_curves(arms, "train", "loss/task", "training loss (mean over seeds)", out / "loss_curves.png")
    print()
    print("![training loss](loss_curves.png)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

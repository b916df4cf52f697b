"""Summarize the PiSSA-vs-LoRA runs: exact match and loss per arm (mean ± std over seeds), loss curves.

Usage: python summarize.py RUNS_DIR OUT_DIR   (writes OUT_DIR/loss_curves.png; prints Markdown)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arms import completed_runs, mean_std  # noqa: E402

CHECKPOINTS = (5, 10, 20, 40, 80, 120)  # steps at which the training loss is tabulated


def train_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in lines if r.get("split") == "train"}


def table(arms: dict[str, list[Path]]) -> None:
    print("| arm | seeds | test exact match | validation exact match (kept) | test loss | "
          + " | ".join(f"train loss @{s}" for s in CHECKPOINTS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(CHECKPOINTS))
    for arm in sorted(arms):
        summaries = [json.loads((r / "summary.json").read_text()) for r in arms[arm]]
        curves = [train_losses(r) for r in arms[arm]]
        kept = [s["best_validation" if s.get("selection") == "best" else "final_validation"] for s in summaries]
        cells = [mean_std([c[s] for c in curves if s in c]) for s in CHECKPOINTS]
        print(f"| {arm} | {len(summaries)} | {mean_std([s['test']['exact_match'] for s in summaries])} | "
              f"{mean_std([k['exact_match'] for k in kept])} | {mean_std([s['test']['loss'] for s in summaries])} | "
              + " | ".join(cells) + " |")


def plot(arms: dict[str, list[Path]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in sorted(a for a in arms if a != "untrained"):
        curves = [train_losses(r) for r in arms[arm]]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(steps, [statistics.mean(c[s] for c in curves) for s in steps], label=f"{arm} (n={len(curves)})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (response tokens, mean over seeds)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)


def main(root: Path, out: Path) -> None:
    arms = completed_runs(root)
    table(arms)
    plot(arms, out)
    print()
    print("![training loss](loss_curves.png)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

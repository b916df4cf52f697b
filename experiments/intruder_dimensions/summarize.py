"""Summarize the intruder-dimension runs: one row per configuration, mean ± std over seeds."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(root: Path) -> None:
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for analysis_file in sorted(root.glob("*/v*/analysis.json")):
        run = analysis_file.parent
        if json.loads((run / "meta.json").read_text()).get("status") != "completed":
            continue
        analysis = json.loads(analysis_file.read_text())["model"]
        summary = json.loads((run / "summary.json").read_text())
        row = rows[run.parent.name]
        row["intruders"].append(analysis["intruders"])
        row["curve"].append(analysis["intruder_curve"])
        row["rankme"].append(analysis["rankme_mean"])
        row["overlap"].append(analysis["subspace_overlap_mean"])
        row["accuracy"].append(summary["test"]["accuracy"])
        row["trainable"].append(summary["trainable_params"])
        row["layers"].append(analysis["layers"])
    epsilons = sorted({e for row in rows.values() for c in row["curve"] for e in c}, key=float)
    print("| configuration | seeds | trainable params | test accuracy | intruders (top-10, eps 0.5) | "
          "mean RankMe of update | mean overlap with top-10 subspace |")
    print("|---|---|---|---|---|---|---|")
    for name in sorted(rows):
        r = rows[name]
        print(f"| {name} | {len(r['intruders'])} | {r['trainable'][0]:,} | {mean_std(r['accuracy'])} | "
              f"{mean_std(r['intruders'])} of {r['layers'][0]} matrices | {mean_std(r['rankme'])} | {mean_std(r['overlap'])} |")
    print()
    print("Intruder count by epsilon (mean over seeds):")
    print()
    print("| configuration | " + " | ".join(f"eps {e}" for e in epsilons) + " |")
    print("|---|" + "---|" * len(epsilons))
    for name in sorted(rows):
        curves = rows[name]["curve"]
        print(f"| {name} | " + " | ".join(f"{statistics.mean(c[e] for c in curves):.1f}" for e in epsilons) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Summarize the intruder-dimension study: per arm, its learning rate chosen on validation and,
over the final seeds, test accuracy and the spectral diagnostics (mean ± std), then Welch tests
of each arm against full fine-tuning and of rsLoRA r=64 against LoRA r=1.

    python experiments/intruder_dimensions/summarize.py <runs>/studies/intruders/vN
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from scipy import stats

from peftlab.study import folder
from peftlab.sweep import status


def mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def arm_of(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("+arm=")), "?")


def main(study_dir: Path) -> None:
    data = folder.read(study_dir)
    chosen = {arm_of(c["configuration"]): " ".join(c["setting"]) for c in data.get("chosen") or []}
    final = folder.sweep_path(study_dir, data.get("final_sweep"))
    if final is None:
        raise SystemExit(f"{study_dir}: the study has no final runs yet; continue it first")
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for member in status.members(final):
        if member.status != "completed" or member.run is None:
            continue
        run = member.run.path
        analysis = json.loads((run / "analysis.json").read_text())["model"]
        summary = json.loads((run / "summary.json").read_text())
        row = rows[arm_of(member.overrides)]
        row["intruders"].append(analysis["intruders"])
        row["curve"].append(analysis["intruder_curve"])
        row["rankme"].append(analysis["rankme_mean"])
        row["overlap"].append(analysis["subspace_overlap_mean"])
        row["norm"].append(analysis["frobenius_norm_total"])
        row["accuracy"].append(summary["test"]["accuracy"])
        row["trainable"].append(summary["trainable_params"])
        row["layers"].append(analysis["layers"])
    epsilons = sorted({e for row in rows.values() for c in row["curve"] for e in c}, key=float)
    print("| arm | lr (chosen on validation) | seeds | trainable params | test accuracy | "
          "intruders (top-10, eps 0.5) | mean RankMe of update | mean overlap with top-10 subspace | "
          "summed Frobenius norm of the updates |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sorted(rows):
        r = rows[name]
        print(f"| {name} | {chosen.get(name, '?')} | {len(r['intruders'])} | {r['trainable'][0]:,} | "
              f"{mean_std(r['accuracy'], 3)} | {mean_std(r['intruders'])} of {r['layers'][0]} matrices | "
              f"{mean_std(r['rankme'])} | {mean_std(r['overlap'])} | {mean_std(r['norm'])} |")
    print()
    print("Intruder count by epsilon (mean ± std over the final seeds):")
    print()
    print("| arm | " + " | ".join(f"eps {e}" for e in epsilons) + " |")
    print("|---|" + "---|" * len(epsilons))
    for name in sorted(rows):
        curves = rows[name]["curve"]
        print(f"| {name} | " + " | ".join(mean_std([c[e] for c in curves], 1) for e in epsilons) + " |")
    print()
    welch(rows)


def welch(rows: dict[str, dict[str, list]]) -> None:
    """Welch's t-test (two-sided) of intruder counts and of test accuracy between pairs of arms."""
    pairs = [(arm, "full") for arm in sorted(rows) if arm != "full"] + [("rslora_r64", "lora_r1")]
    print("Welch tests (two-sided; difference = first minus second):")
    print()
    print("| pair | intruders: difference, p | test accuracy: difference, p |")
    print("|---|---|---|")
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        cells = []
        for key, digits in (("intruders", 1), ("accuracy", 3)):
            x, y = rows[a][key], rows[b][key]
            diff = statistics.mean(x) - statistics.mean(y)
            if len(x) < 2 or len(y) < 2 or (statistics.pvariance(x) == 0 and statistics.pvariance(y) == 0):
                p = "-" if diff else "1 (identical)"
            else:
                p = f"{stats.ttest_ind(x, y, equal_var=False).pvalue:.3g}"
            cells.append(f"{diff:+.{digits}f}, p = {p}")
        print(f"| {a} vs {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

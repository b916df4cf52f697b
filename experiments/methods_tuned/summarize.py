"""The compact table of the study (the one the project README shows), from `peftlab compare --format json`.

    python experiments/methods_tuned/summarize.py [STUDY_FOLDER]   # default: the newest study under runs/

Rows by the validation mean of the final seeds, best first (compare's ranking); test accuracy is reported,
never ranked on. "vs best" is Welch's test against the best row, Holm-adjusted for the table's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def newest_study() -> Path:
    studies = sorted((HERE / "runs" / "studies" / "methods-tuned").glob("v*"), key=lambda p: int(p.name[1:]))
    if not studies:
        sys.exit("no study under runs/studies/methods-tuned: run run.sh first")
    return studies[-1]


def compare_rows(study: Path) -> dict:
    peftlab = os.environ.get("PEFTLAB", "peftlab").split()
    done = subprocess.run([*peftlab, "compare", str(study), "--format", "json"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr.strip() or f"peftlab compare failed with exit code {done.returncode}")
    return json.loads(done.stdout)


def verdict(row: dict) -> str:
    if row.get("best"):
        return "best (on validation)"
    p = row.get("p_holm_vs_best")
    if p is None:
        return "-"
    return f"{'differs' if p < 0.05 else 'n.d.'} (Holm p = {p:.2g}, g = {row['hedges_g_vs_best']:+.1f})"


def table(data: dict) -> str:
    lines = ["| method | lr (chosen on validation) | n | val accuracy | test accuracy | test 95% CI | vs best (test) |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(data["rows"], key=lambda r: -r["val_mean"]):
        ci = row.get("test_ci95")
        lines.append(
            f"| {row['method']} | {float(row['optimizer.lr']):.2g} | {row['n']} | {row['val_mean']:.3f} ± {row['val_std']:.3f} "
            f"| {row['test_mean']:.3f} ± {row['test_std']:.3f} | "
            f"{f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'} | {verdict(row)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    study = Path(sys.argv[1]) if len(sys.argv) > 1 else newest_study()
    print(table(compare_rows(study)))

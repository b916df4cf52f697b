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


def stat(row: dict, split: str) -> str:
    mean, std = row[f"{split}_mean"], row[f"{split}_std"]
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def table(data: dict) -> str:
    lines = ["| method | lr (chosen on validation) | n | val accuracy | test accuracy | test 95% CI | vs best (test) |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(data["rows"], key=lambda r: -r["val_mean"]):
        ci = row.get("test_ci95")
        lines.append(
            f"| {row['method']} | {float(row['optimizer.lr']):.2g} | {row['n']} | {stat(row, 'val')} "
            f"| {stat(row, 'test')} | "
            f"{f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'} | {verdict(row)} |")
    return "\n".join(lines)


def verdicts(data: dict) -> str:
    """Which methods the table tells apart from the best one (on test, Holm-adjusted), and which not."""
    rows = sorted(data["rows"], key=lambda r: -r["val_mean"])
    best = next(r for r in rows if r.get("best"))
    differ = [r["method"] for r in rows if r.get("p_holm_vs_best") is not None and r["p_holm_vs_best"] < 0.05]
    same = [r["method"] for r in rows if r.get("p_holm_vs_best") is not None and r["p_holm_vs_best"] >= 0.05]
    return (f"Best on validation: {best['method']} (test {stat(best, 'test')}). "
            f"Below it on test after Holm's adjustment ({len(differ)}): {', '.join(differ) or 'none'}. "
            f"Not distinguishable from it ({len(same)}): {', '.join(same) or 'none'}.")


#: Claims of the methods' papers that this table can re-ask: (method, against), each "method >= against".
CLAIMS = [("pissa", "lora"), ("milora", "pissa"), ("dora", "lora"), ("lora_pro", "lora"), ("lora_pro", "full"),
          ("hft", "full"), ("ba_lora", "pissa"), ("corda", "lora"), ("eva", "lora"), ("sorsa", "pissa")]


def test_values(row: dict) -> list[float]:
    """Each final run's test accuracy at its selected checkpoint, from its summary.json."""
    values = []
    for run in row["runs"]:
        summary = json.loads((Path(run) / "summary.json").read_text())
        values.append(float(summary["test"][row["metric"]]))
    return values


def claims(data: dict) -> str:
    """Welch's test of each claimed pair on test accuracy: exploratory, one test per line, not adjusted."""
    from scipy.stats import ttest_ind

    rows = {r["method"]: r for r in data["rows"]}
    lines = ["| claim | difference in test accuracy | Welch p (unadjusted) |", "|---|---|---|"]
    for method, against in CLAIMS:
        if method not in rows or against not in rows:
            continue
        a, b = test_values(rows[method]), test_values(rows[against])
        p = ttest_ind(a, b, equal_var=False).pvalue if len(a) > 1 and len(b) > 1 else float("nan")
        diff = sum(a) / len(a) - sum(b) / len(b)
        lines.append(f"| {method} >= {against} | {diff:+.3f} | {p:.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    study = Path(sys.argv[1]) if len(sys.argv) > 1 else newest_study()
    data = compare_rows(study)
    print(table(data))
    print()
    print(verdicts(data))
    print()
    print(claims(data))

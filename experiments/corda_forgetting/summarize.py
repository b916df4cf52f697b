"""Summarize the CorDA-forgetting runs: the task's test accuracy and the drift on both text sets, per arm.

Usage: python summarize.py DRIFT.jsonl RUNS_DIR [ARM ...]   (prints Markdown; the arms default to CorDA's)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arms import completed_runs, mean_std, summary  # noqa: E402

ARMS = ["lora", "corda-ipa", "corda-kpa"]


def main(drift_file: Path, root: Path, order: list[str]) -> None:
    rows = defaultdict(list)
    for line in drift_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["arm"]].append(row)
    runs = completed_runs(root, order)
    print("| arm | seeds | task test accuracy | preserved drift (1 - cos) | preserved structure (Spearman) "
          "| task drift (1 - cos) | task structure (Spearman) |")
    print("|---|---|---|---|---|---|---|")
    for arm in [a for a in order if a in rows]:
        measured = rows[arm]
        accuracy = [summary(r)["test"]["accuracy"] for r in runs.get(arm, [])]
        cells = [mean_std([m[s][k] for m in measured]) for s in ("preserved", "tuned") for k in ("drift", "structure")]
        print(f"| {arm} | {len(measured)} | {mean_std(accuracy)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] or ARMS)

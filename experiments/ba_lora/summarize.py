"""Summarize the BA-LoRA runs: accuracy and BA-LoRA's three terms per arm (mean ± std over seeds).

Usage: python summarize.py RUNS_DIR   (prints Markdown; run.sh writes it to results.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arms import completed_runs, kept_validation, mean_std, summary  # noqa: E402

# lora-lr2e-3 and pissa (eva_convergence's arms, when RUNS is shared) have the settings of lora-measured and
# pissa-measured, without the weight-0 measurement of the terms (which takes no gradient).
ORDER = ("lora-measured", "lora-lr2e-3", "pissa-measured", "pissa", "ba_lora", "ba_lora_x100")
LM_ORDER = ("lm-lora", "lm-pissa", "lm-ba_lora")
TERMS = ("ba_consistency", "ba_diversity", "ba_svd")


def last_train_line(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in lines if r.get("split") == "train"]
    return train[-1] if train else {}


def row(arm: str, runs: list[Path]) -> str:
    summaries = [summary(r) for r in runs]
    metric = summaries[0].get("metric", "accuracy")
    kept = [kept_validation(s) for s in summaries]
    last = [last_train_line(r) for r in runs]
    cells = [
        arm, str(len(runs)),
        mean_std([k.get(metric) for k in kept]),
        mean_std([s["test"].get(metric) for s in summaries]),
        mean_std([s["test"].get("loss") for s in summaries]),
        mean_std([x.get("loss/task") for x in last]),
    ]
    cells += [mean_std([x.get(f"reg/{t}") for x in last]) for t in TERMS]
    cells.append(mean_std([s.get("tokens_per_s") for s in summaries], 0))
    return "| " + " | ".join(cells) + " |", metric


def table(arms: dict[str, list[Path]], order: tuple[str, ...], title: str) -> None:
    names = [a for a in order if a in arms]  # the RUNS folder may hold other experiments' arms too
    if not names:
        return
    rows = [row(a, arms[a]) for a in names]
    metric = rows[0][1]
    print(f"### {title}\n")
    print(f"| arm | seeds | validation {metric} (kept) | test {metric} | test loss | train task loss (last) | "
          + " | ".join(f"{t} (last)" for t in TERMS) + " | tokens/s |")
    print("|---|---|---|---|---|---|" + "---|" * len(TERMS) + "---|")
    for line, _ in rows:
        print(line)
    print()


def main(root: Path) -> None:
    arms = completed_runs(root)
    if not any(a in arms for a in ORDER + LM_ORDER):
        print(f"no completed runs under {root}")
        return
    table(arms, ORDER, "Default task (MiniLM, docstring classification)")
    table(arms, LM_ORDER, "Causal LM (Gemma 3 270M, arithmetic word problems)")
    print("Mean ± sample std over seeds. The terms are the raw (unweighted) values of the last logged training "
          "interval; in the lora-measured and pissa-measured arms they are measured at weight 0 (not trained on).")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

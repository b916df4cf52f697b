"""The files of this experiment's records, one path a line, for `git add -f`.

A study of 171 runs outlasts a working session, and its table should be checkable
from the raw runs rather than taken on trust. So the records are committed: the
study's study.json, its sweeps' sweep.json and launch records, and of every run
that finished (completed or failed) its meta.json, config.yaml, overrides.txt,
metrics.jsonl, summary.json and adapter config. Weights, optimizer state,
checkpoints and predictions stay out (about 10 MB a run). A run still training
is left out: without its checkpoints it could not be resumed, and `run.sh`
(which continues the study) runs it again from the start.

    git add -f $(python experiments/methods_tuned/records.py)

`peftlab compare experiments/methods_tuned/runs/studies/methods-tuned/v1` then reads
the committed records alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUN_FILES = ("meta.json", "config.yaml", "overrides.txt", "metrics.jsonl", "summary.json",
             "adapter/adapter_config.json")
FINISHED = ("completed", "failed")


def records(root: Path) -> list[Path]:
    """The study, sweep and launch records, and the record files of every finished run under ``root``."""
    found = sorted((root / "studies").glob("*/v*/study.json"))
    # sweep.json lists the members; each launch.json what --continue starts from (Hydra's own output is left out)
    found += sorted(p for p in (root / "sweeps").rglob("*.json") if p.name in ("sweep.json", "launch.json"))
    for meta in sorted(root.glob("*/v*/meta.json")):
        if json.loads(meta.read_text()).get("status") in FINISHED:
            found += [meta.parent / name for name in RUN_FILES if (meta.parent / name).is_file()]
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "runs"
    print("\n".join(str(p) for p in records(root)))

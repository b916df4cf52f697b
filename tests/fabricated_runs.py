"""Run folders fabricated for ``compare``'s tests: what ``peftlab train`` would have written, without training.

A pytest plugin (see conftest.py): its fixtures ``hermetic`` and ``runs`` serve every test file that asks for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab import compare as cmp

# test accuracy per (method, rank) for seeds 0 and 1
GRID = {
    ("lora", 4): (0.80, 0.81),
    ("lora", 8): (0.855, 0.865),  # gap to best 0.02 <= 0.0141 + 0.0071: within noise
    ("pissa", 4): (0.84, 0.85),  # gap 0.035 > 0.0212: not within noise
    ("pissa", 8): (0.87, 0.89),  # best: 0.88 ± 0.014
}
TRAINABLE = {4: 37_000, 8: 74_000}
CLI = Path(sys.executable).parent / "peftlab"



@pytest.fixture
def hermetic(tmp_path, monkeypatch):
    """No test reads the current directory's runs/ or the user's PEFTLAB_RUNS_DIR."""
    monkeypatch.setenv("PEFTLAB_RUNS_DIR", str(tmp_path / "env-runs"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """The fabricated 2 methods x 2 ranks x 2 seeds grid, plus a running run (``grid_store``)."""
    return grid_store(tmp_path / "runs")


def fabricate_run(runs: Path, method: str, rank: int, seed: int, acc: float, *, version: int,
                  status: str = "completed", analysis: bool = True, sweep: dict | None = None) -> Path:
    d = runs / f"{method}-minilm-stdlib_docs" / f"v{version}"
    d.mkdir(parents=True)
    config = {
        "model": {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
        "dataset": {"name": "stdlib_docs"},
        "method": {"_target_": f"peftlab.methods.{method}.{method.upper()}", "rank": rank, "alpha": 16},
        "optimizer": {"lr": 0.0004},
        "trainer": {"max_steps": 50, "metric": "accuracy"},
        "seed": seed,
        "name": None,
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "overrides.txt").write_text(f"method={method}\nmethod.rank={rank}\nseed={seed}\n")
    (d / "meta.json").write_text(json.dumps({
        "status": status, "started_at": "2024-01-01T00:00:00", "ended_at": "2024-01-01T00:01:35",
        "seed": seed, "choices": {"method": method, "model": "minilm", "dataset": "stdlib_docs"},
        **({"sweep": sweep} if sweep else {}),
    }))
    lines = []
    for step in range(10, 60, 10):
        lines.append({"step": step, "split": "train", "loss": 2.0 / step * (1 + 0.1 * seed) + 0.1 * rank / 8,
                      "lr": 0.0004, "tokens_per_s": 5000.0, "reg/l2_pretrained": 0.01})
        if step % 20 == 0 or step == 50:
            lines.append({"step": step, "split": "validation", "loss": 0.8, "accuracy": acc - 0.05 + step / 1000})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if status == "completed":
        (d / "summary.json").write_text(json.dumps({
            "test": {"accuracy": acc, "loss": 1.0 - acc},
            "best_validation": {"step": 50, "accuracy": acc + 0.01, "loss": 0.9 - acc},
            "final_validation": {"step": 50, "accuracy": acc + 0.01, "loss": 0.9 - acc},
            "trainable_params": TRAINABLE[rank], "total_params": 22_700_000,
            "wall_time_s": 95.1 + rank, "tokens_per_s": 5100.0, "peak_memory_mb": 900.0 + rank, "steps": 50,
        }))
    if analysis and status == "completed":
        (d / "analysis.json").write_text(json.dumps({
            "layers": {}, "model": {"intruders": 12 // rank + seed, "intruder_curve": {"0.5": 12 // rank + seed}},
        }))
    return d


def member_stamp(index: int, path: str = "sweeps/grid/v1") -> dict:
    """What train writes into a sweep member's meta.json (path relative to the runs root)."""
    name, version = path.split("/")[-2:]
    return {"path": path, "name": name, "version": version, "member": index}


def grid_store(root: Path) -> Path:
    """A store under ``root``: the GRID's runs as members of sweep grid/v1, one member not yet run,
    and one unfinished run outside the sweep."""
    members = []
    versions: dict[str, int] = {}
    for (method, rank), accs in GRID.items():
        for seed, acc in enumerate(accs):
            v = versions[method] = versions.get(method, -1) + 1
            fabricate_run(root, method, rank, seed, acc, version=v, sweep=member_stamp(len(members)))
            members.append({"index": len(members),
                            "overrides": [f"method={method}", f"method.rank={rank}", f"seed={seed}"]})
    members.append({"index": len(members), "overrides": ["method=lora", "method.rank=16", "seed=0"]})  # no run yet
    # one unfinished run outside the sweep
    fabricate_run(root, "lora", 8, 2, 0.5, version=99, status="running")
    sweep = root / "sweeps" / "grid" / "v1"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({
        "name": "grid", "version": "v1", "grid": ["method=lora,pissa", "method.rank=4,8", "seed=0,1"],
        "members": members,
    }))
    return root


def grouped_rows(root: Path, **kw):
    kept, left_out = cmp.select(cmp.collect([str(root)]))
    return cmp.group(kept, **kw), left_out


def run_cli(*args, cwd=None, columns=220):
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([str(CLI), *args], check=False, capture_output=True, text=True, env=env, cwd=cwd)




def as_if_stopped_early(run: Path, checkpoints_kept: int, **config_changes: dict) -> None:
    """Turn a completed run into one interrupted after its first ``checkpoints_kept`` checkpoints.

    The later checkpoints, the summary and the adapter go, as if never written.
    ``config_changes`` (``trainer={"precision": "fp16"}``) are merged into its config.yaml,
    as the resume will read it.
    """
    import shutil

    for ckpt in sorted((run / "checkpoints").iterdir())[checkpoints_kept:]:
        shutil.rmtree(ckpt)
    shutil.rmtree(run / "adapter", ignore_errors=True)
    (run / "summary.json").unlink(missing_ok=True)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "status": "interrupted", "ended_at": None}))
    set_config(run, **config_changes)


def set_config(run: Path, **changes: dict) -> None:
    """Merge ``changes`` (group -> {key: value}) into the run's config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    for group, values in changes.items():
        config[group].update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(config))

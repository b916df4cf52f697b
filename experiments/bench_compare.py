"""Benchmark ``peftlab compare`` over many fabricated run folders.

    .venv/bin/python experiments/bench_compare.py [--runs 200] [--repeat 5]

Fabricates N completed run folders (methods x ranks x seeds, each with
config.yaml, overrides.txt, meta.json, a 150-step metrics.jsonl, summary.json
and analysis.json) in a temporary folder, then times, in process, the best of
``--repeat`` passes of collect, select+group, and rendering (rich table,
Markdown, CSV, JSON), plus one end-to-end ``peftlab compare`` console-script
call (interpreter start-up and imports included). Target: the in-process
total for 200 runs well under 1 s. No torch is imported.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from peftlab import compare as cmp

METHODS = ("lora", "pissa", "milora", "dora", "sorsa")
RANKS = (4, 8, 16, 32)


def fabricate(root: Path, n_runs: int) -> None:
    rng = random.Random(0)
    seeds_per = max(1, -(-n_runs // (len(METHODS) * len(RANKS))))
    made = 0
    for method, rank, seed in itertools.product(METHODS, RANKS, range(seeds_per)):
        if made == n_runs:
            break
        d = root / f"{method}-minilm-stdlib_docs" / f"v{made}"
        d.mkdir(parents=True)
        cfg = {
            "model": {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 128},
            "dataset": {"name": "stdlib_docs", "text_column": "text", "label_column": "label"},
            "method": {"_target_": f"peftlab.methods.{method}.Method", "rank": rank, "alpha": 2 * rank,
                       "dropout": 0.0, "target_modules": ["query", "key", "value", "dense"]},
            "optimizer": {"name": "adamw", "lr": 4e-4, "weight_decay": 0.0},
            "trainer": {"max_steps": 150, "batch_size": 32, "eval_every": 50, "metric": "accuracy"},
            "regularizer": {}, "seed": seed, "name": None, "runs_dir": "runs",
        }
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "overrides.txt").write_text(f"method={method}\nmethod.rank={rank}\nseed={seed}\n")
        (d / "meta.json").write_text(json.dumps({
            "status": "completed", "seed": seed, "started_at": "2024-01-01T00:00:00",
            "ended_at": "2024-01-01T00:02:00", "git": {"commit": "0" * 40, "dirty": False},
            "choices": {"method": method, "model": "minilm", "dataset": "stdlib_docs"},
        }))
        lines = []
        for step in range(10, 151, 10):
            lines.append({"step": step, "split": "train", "loss": 2.0 / step + rng.random() * 0.05,
                          "lr": 4e-4, "tokens_per_s": 5000.0})
            if step % 50 == 0:
                lines.append({"step": step, "split": "validation", "loss": 0.5, "accuracy": 0.8 + rng.random() / 10})
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        acc = 0.8 + rank / 400 + rng.gauss(0, 0.01)
        (d / "summary.json").write_text(json.dumps({
            "test": {"accuracy": acc, "loss": 1 - acc}, "best_validation": {"step": 150, "accuracy": acc},
            "final_validation": {"step": 150, "accuracy": acc}, "trainable_params": 9216 * rank,
            "total_params": 22_700_000, "wall_time_s": 120.0, "tokens_per_s": 5000.0,
            "peak_memory_mb": 900.0, "steps": 150,
        }))
        layers = {f"encoder.layer.{i}.{m}": {"intruders": 1, "similarities": [rng.random() for _ in range(10)],
                                             "rankme": 3.0, "spectral_norm": 0.1, "frobenius_norm": 0.2,
                                             "subspace_overlap": 0.3}
                  for i in range(6) for m in ("query", "key", "value", "dense")}
        (d / "analysis.json").write_text(json.dumps({"layers": layers, "model": {"intruders": 24}}))
        made += 1


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from rich.console import Console

    with tempfile.TemporaryDirectory(prefix="peftlab-bench-compare-") as tmp:
        root = Path(tmp) / "runs"
        t0 = time.perf_counter()
        fabricate(root, args.runs)
        t_fab = time.perf_counter() - t0

        t_collect, records = best_of(lambda: cmp.collect([str(root)]), args.repeat)
        t_group, rows = best_of(lambda: cmp.group(cmp.select(records)[0]), args.repeat)

        def render():
            Console(file=io.StringIO(), width=160).print(cmp.render_table(rows, width=160))
            return cmp.to_markdown(rows), cmp.to_csv(rows), cmp.to_json(rows)

        t_render, _ = best_of(render, args.repeat)
        exe = Path(sys.executable).parent / "peftlab"
        t0 = time.perf_counter()
        res = subprocess.run([str(exe), "compare", str(root)], check=False, capture_output=True, text=True)
        t_cli = time.perf_counter() - t0

    total = t_collect + t_group + t_render
    print(f"runs: {len(records)}  configurations: {len(rows)}  (fabricated in {t_fab:.2f} s)")
    print(f"collect          {t_collect * 1e3:8.1f} ms   (best of {args.repeat})")
    print(f"select + group   {t_group * 1e3:8.1f} ms")
    print(f"render (4 fmts)  {t_render * 1e3:8.1f} ms")
    print(f"in-process total {total * 1e3:8.1f} ms   target < 1000 ms: {'ok' if total < 1.0 else 'SLOW'}")
    print(f"CLI end to end   {t_cli * 1e3:8.1f} ms   (exit {res.returncode}; includes interpreter start and imports)")
    print(f"torch imported in process: {'torch' in sys.modules}")


if __name__ == "__main__":
    main()

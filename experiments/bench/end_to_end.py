"""The whole default run, ``peftlab train``, against the PEFT + Trainer script doing the same work.

    python experiments/bench/end_to_end.py [--pairs 3] [--json FILE]

Each pair runs both commands as fresh processes, one after the other, the
order alternating between pairs so that drift of the machine hits both alike;
seeds go 0, 1, 2... (the same seed for both in a pair). Measured per process:
wall time from launch to exit (interpreter start-up, imports, data, training,
evaluation, checkpoints and all), peak resident memory (the kernel's ru_maxrss
of the child; it includes the high-water mark inherited at fork, which is this
script's own, a few tens of MB: no torch here), and test accuracy (peftlab's summary.json; the script's JSON
line). Reported: medians, the ratio peftlab / script per pair, accuracy over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one process, reaped by wait4 for its resource usage."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def peftlab_run(seed: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        peftlab = str(Path(sys.executable).with_name("peftlab"))
        wall, rss, _ = timed([peftlab, "train", f"runs_dir={runs}", f"seed={seed}", "-q"], env)
        summary = json.loads(next(Path(runs).glob("*/v1/summary.json")).read_text())
    return {"wall_s": wall, "peak_rss_mb": rss, "test_accuracy": summary["test"]["accuracy"]}


def script_run(seed: int, env: dict) -> dict:
    wall, rss, out = timed([sys.executable, str(HERE / "peft_trainer.py"), f"--seed={seed}"], env)
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_mb": rss, "test_accuracy": result["test_accuracy"]}


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PEFTLAB_RUNS_DIR", None)
    results: dict[str, list[dict]] = {"peftlab train": [], "PEFT + Trainer script": []}
    for seed in range(args.pairs):
        order = [("peftlab train", peftlab_run), ("PEFT + Trainer script", script_run)]
        for name, run in order if seed % 2 == 0 else order[::-1]:
            results[name].append(run(seed, env))
            r = results[name][-1]
            print(f"seed {seed}  {name:22s} {r['wall_s']:6.1f} s  {r['peak_rss_mb']:6.0f} MB  "
                  f"test {r['test_accuracy']:.4f}", flush=True)
    ours, theirs = results["peftlab train"], results["PEFT + Trainer script"]
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(ours, theirs)]
    print(f"\n{args.pairs} pairs, {os.cpu_count()} CPUs")
    print(f"{'':22s} {'median wall s':>14s} {'median peak RSS MB':>19s} {'test accuracy':>16s}")
    for name, rows in results.items():
        print(f"{name:22s} {statistics.median(r['wall_s'] for r in rows):14.1f} "
              f"{statistics.median(r['peak_rss_mb'] for r in rows):19.0f} "
              f"{summary([r['test_accuracy'] for r in rows]):>16s}")
    print(f"wall time peftlab / script: median {statistics.median(ratios):.3f} "
          f"(pairs: {', '.join(f'{x:.3f}' for x in ratios)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": args.pairs, "results": results, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()

"""Resume is bit-exact for the block/random-basis adapters: MiSS, and RandLoRA, whose shared
random bases are not saved but regenerated from method.basis_seed when the run is rebuilt.

A run is stopped with SIGTERM after a few steps and resumed; its adapter and every
training-loss line must equal those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import peftlab

COMMON = ["model=tiny", "trainer.max_steps=8", "trainer.log_every=1", "trainer.eval_every=0",
          "trainer.checkpoint_every=100", "trainer.batch_size=8", "seed=3", "-q"]
METHODS = {"miss": ["method=miss", "method.dropout=0.1"], "randlora": ["method=randlora", "method.dropout=0.1"]}


def train_lines(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: r.get(k) for k in ("step", "loss", "grad_norm")} for r in rows if r.get("split") == "train"]


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(x).get("step", 0) >= step
                                     for x in metrics.read_text().splitlines() if x.strip()):
            return
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()}"
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} in {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_stop_and_resume_gives_the_uninterrupted_run(method, tmp_path):
    args = [*COMMON, *METHODS[method]]
    env = {"PEFTLAB_RUNS_DIR": str(tmp_path)}
    result = peftlab("train", *args, "name=straight", env=env)
    assert result.returncode == 0, result.stderr
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "train", *args, "name=cut"],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "cut" / "v1", 2, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert json.loads((tmp_path / "cut" / "v1" / "meta.json").read_text())["status"] == "interrupted"
    result = peftlab("train", "resume=cut", env=env)
    assert result.returncode == 0, result.stderr
    straight, cut = tmp_path / "straight" / "v1", tmp_path / "cut" / "v1"
    assert train_lines(cut) == train_lines(straight)
    a, b = (load_file(str(run / "adapter" / "adapter.safetensors")) for run in (straight, cut))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert not any("bases" in k for k in a)  # RandLoRA's bases are regenerated, not stored

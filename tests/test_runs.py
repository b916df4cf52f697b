"""The run store: version allocation, atomic writes, status rules, listing, resolving, provenance."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab import runs
from peftlab.errors import UserError


def _make(root: Path, name: str, started_at: str | None = None, status: str = "running") -> runs.Run:
    run = runs.allocate(root, name)
    meta = runs.new_meta(["peftlab", "train", f"name={name}"], seed=0, device="cpu")
    meta["status"] = status
    if started_at:
        meta["started_at"] = started_at
    run.write_meta(**meta)
    return run


# --------------------------------------------------------------------------- allocation


def test_allocate_numbers_versions_from_v1(tmp_path):
    versions = [runs.allocate(tmp_path, "lora").version for _ in range(3)]
    assert versions == ["v1", "v2", "v3"]
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["v1", "v2", "v3"]


def test_allocate_sorts_numerically_and_skips_gaps(tmp_path):
    for v in ("v2", "v10", "v9"):
        (tmp_path / "lora" / v).mkdir(parents=True)
    (tmp_path / "lora" / "notes").mkdir()
    run = runs.allocate(tmp_path, "lora")
    assert run.version == "v11"
    assert run.name == "lora"
    assert run.path == (tmp_path / "lora" / "v11").absolute()


@pytest.mark.parametrize("bad", ["", "  ", "a/b", "a\\b", "..", "."])
def test_allocate_rejects_names_that_are_not_plain_folders(tmp_path, bad):
    with pytest.raises(UserError, match="name=.*plain folder name"):
        runs.allocate(tmp_path, bad)
    assert not (tmp_path / "a").exists()


def _allocate_worker(root: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(runs.allocate(Path(root), "race").version)


def test_concurrent_processes_never_share_a_version(tmp_path):
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    n = 8
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allocate_worker, args=(str(tmp_path), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(got, key=runs.version_number) == [f"v{i}" for i in range(1, n + 1)]
    assert len({p.name for p in (tmp_path / "race").iterdir()}) == n


# --------------------------------------------------------------------------- files


def test_atomic_writes_replace_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "x.json"
    runs.atomic_write_json(target, {"a": 1})
    runs.atomic_write_json(target, {"a": 2, "b": [1, 2]})
    runs.atomic_write_text(tmp_path / "sub" / "y.txt", "hello\n")
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert (tmp_path / "sub" / "y.txt").read_text() == "hello\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.json", "y.txt"]


def test_atomic_write_failure_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "x.json"
    runs.atomic_write_json(target, {"ok": True})

    with pytest.raises(TypeError):
        runs.atomic_write_text(target, object())  # type: ignore[arg-type]  # write() fails mid-way
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_run_files_roundtrip(tmp_path):
    run = runs.allocate(tmp_path, "lora")
    assert run.meta == {} and run.summary == {} and run.config == {}
    assert run.status == "unknown" and run.metrics() == [] and run.overrides() == []

    run.write_meta(**runs.new_meta(["peftlab", "train", "method.rank=4"], seed=3, device="cpu"))
    run.write_config("method:\n  _target_: peftlab.methods.lora.LoRA\n  rank: 4\n", ["method.rank=4", "seed=3"])
    run.write_meta(choices={"method": "lora"})
    assert run.status == "running"
    assert run.meta["seed"] == 3 and run.meta["choices"] == {"method": "lora"}
    assert run.meta["argv"] == ["peftlab", "train", "method.rank=4"]
    assert run.meta["pid"] == os.getpid() and run.meta["device"] == "cpu"
    assert runs.parse_iso(run.meta["started_at"]).utcoffset().total_seconds() == 0
    assert run.config == {"method": {"_target_": "peftlab.methods.lora.LoRA", "rank": 4}}
    assert run.overrides() == ["method.rank=4", "seed=3"]
    # Another process's view reads the same files.
    assert runs.open_run(run.path).meta["choices"] == {"method": "lora"}
    assert run.adapter_dir == run.path / "adapter"
    assert run.checkpoints_dir == run.path / "checkpoints"
    leftovers = [p.name for p in run.path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_completed_requires_summary(tmp_path):
    run = _make(tmp_path, "lora")
    with pytest.raises(ValueError, match="summary.json"):
        run.set_status("completed")
    assert runs.open_run(run.path).status == "running"
    run.write_summary({"test": {"accuracy": 0.9}})
    run.set_status("completed", steps=150)
    fresh = runs.open_run(run.path)
    assert fresh.status == "completed" and fresh.meta["steps"] == 150
    assert runs.parse_iso(fresh.meta["ended_at"]) is not None
    assert fresh.summary == {"test": {"accuracy": 0.9}}


def test_set_status_terminal_states_record_end_and_unknown_is_refused(tmp_path):
    run = _make(tmp_path, "lora")
    run.set_status("failed", error="RuntimeError: x")
    assert run.status == "failed" and run.meta["ended_at"] and run.meta["error"] == "RuntimeError: x"
    run.write_meta(status="running", pid=999_999_999)
    assert runs.is_stale(run)  # marked running by a process that is gone
    run.set_status("running")  # e.g. resumed: this process owns it now
    assert run.meta["ended_at"] is None and run.meta["pid"] == os.getpid()
    assert not runs.is_stale(run)
    if runs.process_start() is not None:  # the pid alive, but taken by another process since (a restart, say)
        run.write_meta(pid_start="another-boot:12345")
        assert runs.is_stale(run)
        run.set_status("running")
        assert run.meta["pid_start"] == runs.process_start() and not runs.is_stale(run)
    run.set_status("interrupted")
    assert run.status == "interrupted" and run.meta["ended_at"]
    with pytest.raises(ValueError, match="status must be one of"):
        run.set_status("done")


def test_metrics_tolerate_a_truncated_last_line(tmp_path):
    run = _make(tmp_path, "lora")
    for step in (10, 20):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 30, "lo')  # the process died mid-write
    assert [r["step"] for r in run.metrics()] == [10, 20]
    # Appending after the crash (a resumed run) starts a fresh line: only the torn record is lost.
    run.append_metrics({"step": 30, "loss": 0.03})
    assert [r["step"] for r in run.metrics()] == [10, 20, 30]


# --------------------------------------------------------------------------- listing and resolving


def test_list_runs_newest_first_and_skips_non_runs(tmp_path):
    a = _make(tmp_path, "a", started_at="2024-01-01T00:00:00+00:00")
    b = _make(tmp_path, "b", started_at="2024-03-01T00:00:00+00:00")
    a2 = _make(tmp_path, "a", started_at="2024-02-01T00:00:00+00:00")
    runs.allocate(tmp_path, "a")  # allocated, no meta.json yet
    (tmp_path / "stray.txt").write_text("x")
    assert [r.label for r in runs.list_runs(tmp_path)] == [b.label, a2.label, a.label]
    assert runs.list_runs(tmp_path / "missing") == []


def test_list_runs_is_fast_for_hundreds_of_runs(tmp_path):
    for i in range(300):
        run = tmp_path / f"run{i % 30}" / f"v{i // 30 + 1}"
        run.mkdir(parents=True)
        (run / "meta.json").write_text(json.dumps({"status": "completed", "started_at": f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00"}))
    start = time.perf_counter()
    listed = runs.list_runs(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert len(listed) == 300
    assert listed[0].label == "run29/v10"


def test_resolve_by_path_name_and_version(tmp_path, monkeypatch):
    v1 = _make(tmp_path, "lora", started_at="2024-01-01T00:00:00+00:00")
    v2 = _make(tmp_path, "lora", started_at="2024-01-02T00:00:00+00:00")
    _make(tmp_path, "pissa")
    assert runs.resolve(str(v1.path), tmp_path) == v1
    assert runs.resolve("lora", tmp_path) == v2
    assert runs.resolve("lora/v1", tmp_path) == v1
    monkeypatch.chdir(tmp_path.parent)
    assert runs.resolve(f"{tmp_path.name}/lora/v2", Path("elsewhere")) == v2


def test_resolve_unknown_names_suggest_the_closest(tmp_path):
    _make(tmp_path, "lora-minilm")
    _make(tmp_path, "pissa-minilm")
    with pytest.raises(UserError) as exc:
        runs.resolve("lora-minlm", tmp_path)
    message = str(exc.value)
    assert "unknown run 'lora-minlm'" in message and "did you mean 'lora-minilm'" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="has no version 'v7'.*v1"):
        runs.resolve("lora-minilm/v7", tmp_path)
    with pytest.raises(UserError, match="no runs under"):
        runs.resolve("anything", tmp_path / "empty")


def test_open_run_refuses_a_folder_without_meta(tmp_path):
    with pytest.raises(UserError, match="is not a run folder"):
        runs.open_run(tmp_path)


def test_age_is_compact():
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    assert runs.age((now - timedelta(minutes=3, seconds=5)).isoformat()) == "3m"
    assert runs.age((now - timedelta(hours=2, minutes=1)).isoformat()) == "2h"
    assert runs.age((now - timedelta(days=5, hours=1)).isoformat()) == "5d"
    assert runs.age(None) == "-" and runs.age("garbage") == "-"


def test_runs_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTLAB_RUNS_DIR", raising=False)
    assert runs.runs_root() == Path("runs")
    monkeypatch.setenv("PEFTLAB_RUNS_DIR", str(tmp_path))
    assert runs.runs_root() == tmp_path
    assert runs.runs_root(tmp_path / "x") == tmp_path / "x"


# --------------------------------------------------------------------------- provenance


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_info_reports_commit_and_dirty(tmp_path):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    assert runs.git_info(tmp_path) == {"commit": None, "dirty": None}  # not a repo
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD").strip()
    (tmp_path / "untracked.txt").write_text("runs are untracked\n")
    assert runs.git_info(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("two\n")
    assert runs.git_info(tmp_path) == {"commit": head, "dirty": True}


def test_environment_lists_versions_without_importing_them():
    code = (
        "import sys, peftlab.runs\n"
        "env = peftlab.runs.environment()\n"
        "peftlab.runs.new_meta(['x'], seed=0)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert env['packages']['peftlab']\n"
        "assert env['python'] and env['hostname'] and env['platform']\n"
        "assert 'torch' in env['packages']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_has_one_owner_at_a_time_and_the_kernel_frees_it_when_the_owner_dies(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = runs.allocate(tmp_path, "owned")
    run.write_meta(status="running")
    assert run.owner() is None
    with run.own():
        info = run.owner()
        assert info["pid"] == os.getpid()
        with pytest.raises(runs.RunBusy, match=f"being written by process {os.getpid()}"):
            run.own()
        assert not runs.is_stale(run)
    assert run.owner() is None and runs.is_stale(run)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from peftlab import runs; o = runs.Run(sys.argv[1]).own(); print('owned', flush=True); "
        "time.sleep(60)"), str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "owned"
        assert run.owner()["pid"] == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 5
        while run.owner() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.owner() is None and runs.is_stale(run)
        run.own().release()
    finally:
        child.kill()


def test_json_files_are_strict_and_non_finite_numbers_become_null(tmp_path):
    run = runs.allocate(tmp_path, "nan")
    run.write_meta(status="running", value=float("nan"), nested={"x": [float("inf"), 1.5]})
    run.append_metrics({"step": 1, "loss": float("-inf")})
    for text in (run.meta_path.read_text(), run.metrics_path.read_text()):
        assert "NaN" not in text and "Infinity" not in text
    assert json.loads(run.meta_path.read_text())["nested"] == {"x": [None, 1.5]}
    assert json.loads(run.metrics_path.read_text().strip())["loss"] is None


def test_resume_moves_the_previous_ending_into_the_history(tmp_path):
    run = runs.allocate(tmp_path, "again")
    run.write_meta(status="running")
    run.set_status("failed", error="boom")
    run.set_status("running")
    meta = run.meta
    assert "error" not in meta and meta["history"][0]["status"] == "failed" and meta["history"][0]["error"] == "boom"


# --------------------------------------------------------------------------- default names


def test_default_name_uses_a_local_datasets_own_name(tmp_path):
    from peftlab.config import compose
    from peftlab.naming import default_name, run_name

    data = tmp_path / "reviews.csv"
    data.write_text("text,label\na,0\n")
    folder = tmp_path / "support-tickets"
    folder.mkdir()
    choices = {"method": "lora", "model": "tiny", "dataset": "hf"}
    assert default_name(choices, str(data)) == "lora-tiny-reviews"
    assert default_name(choices, str(folder)) == "lora-tiny-support-tickets"
    assert default_name(choices, "stanfordnlp/imdb") == "lora-tiny-hf"  # a hub id is not a local dataset
    assert default_name({"method": "lora", "model": "tiny", "dataset": "stdlib_docs"}) == "lora-tiny-stdlib_docs"
    cfg = compose(["model=tiny", "dataset=hf", f"dataset.path={data}"])
    assert run_name(cfg, choices) == "lora-tiny-reviews"
    assert run_name(compose(["name=mine"]), choices) == "mine"


def test_runs_dir_is_resolved_in_one_place(tmp_path, monkeypatch):
    from peftlab.config import compose

    monkeypatch.setenv("PEFTLAB_RUNS_DIR", str(tmp_path / "env"))
    cfg = compose([])
    assert cfg.runs_dir is None  # the config leaves it to runs.runs_root
    assert runs.runs_root(cfg.runs_dir) == tmp_path / "env"
    assert runs.runs_root(compose([f"runs_dir={tmp_path / 'cfg'}"]).runs_dir) == tmp_path / "cfg"


def test_asking_who_owns_a_run_never_refuses_its_owner(tmp_path):
    """``owner()`` holds a shared lock for an instant (sweeps poll their members so); a process
    taking ownership in that instant waits it out rather than being told the run is busy."""
    import fcntl
    import threading

    run = runs.allocate(tmp_path, "probed")
    run.write_meta(status="running")
    run.own().release()  # the .owner file exists, as for any run written before
    fd = os.open(run.path / ".owner", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe, caught in the middle
    threading.Timer(0.1, os.close, (fd,)).start()
    with run.own():
        assert run.owner()["pid"] == os.getpid()

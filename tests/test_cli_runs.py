"""``peftlab runs`` and ``peftlab show`` through the real console script, on fabricated run folders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftlab import config, runs

SCRIPT = Path(sys.executable).parent / "peftlab"
if not SCRIPT.exists():  # pragma: no cover - e.g. tests run with another interpreter
    SCRIPT = Path(shutil.which("peftlab") or "peftlab")


def peftlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("PEFTLAB_RUNS_DIR", None)
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _fabricate(
    root: Path,
    name: str,
    *,
    started_at: str,
    status: str = "completed",
    method_choice: str | None = "lora",
    changes: dict | None = None,
    summary: dict | None = None,
    metrics: int = 0,
) -> runs.Run:
    run = runs.allocate(root, name)
    meta = runs.new_meta(["peftlab", "train", *(f"{k}={v}" for k, v in (changes or {}).items())], seed=7, device="cpu")
    meta["started_at"] = started_at
    if method_choice:
        meta["choices"] = {"method": method_choice}
    run.write_meta(**meta)
    cfg = config.default_config()
    for key, value in (changes or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True), [f"{k}={v}" for k, v in (changes or {}).items()])
    for step in range(1, metrics + 1):
        run.append_metrics({"step": step * 10, "split": "train", "loss": round(1.0 / step, 4)})
    if summary is not None:
        run.write_summary(summary)
    if status != "running":
        run.set_status(status)
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    _fabricate(
        root,
        "lora-minilm",
        started_at="2024-05-01T10:00:00+00:00",
        changes={"method.rank": 16, "trainer.max_steps": 300},
        summary={
            "test": {"accuracy": 0.8512, "loss": 0.42},
            "final_validation": {"accuracy": 0.8601, "loss": 0.45},
            "best_validation": {"step": 250, "accuracy": 0.8671},
            "steps": 300,
            "trainable_params": 73728,
            "total_params": 22786304,
            "wall_time_s": 125.0,
            "tokens_per_s": 4321.5,
            "peak_memory_mb": 812.5,
            "device": "cpu",
            "metric": "accuracy",
        },
        metrics=12,
    )
    _fabricate(
        root,
        "lora-minilm",
        started_at="2024-05-02T10:00:00+00:00",
        status="failed",
        changes={"method.rank": 4},
    )
    _fabricate(
        root,
        "full-minilm",
        started_at="2024-04-01T10:00:00+00:00",
        method_choice=None,  # falls back to the class name of method._target_
        summary={"final_validation": {"accuracy": 0.7}},
    )
    return root


def test_runs_lists_newest_first_with_status_method_metric(store):
    out = peftlab("runs", "--runs-dir", str(store))
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if "minilm" in line]
    # the typed settings that differ between the runs get a column each: method.rank and trainer.max_steps
    header = next(line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["run"])
    assert header == ["run", "status", "method", "rank", "max_steps", "accuracy", "age"]
    assert lines[0][:6] == ["lora-minilm/v2", "failed", "lora", "4", "150", "-"]
    assert lines[1][:6] == ["lora-minilm/v1", "completed", "lora", "16", "300", "0.8512"]
    assert lines[2][:5] == ["full-minilm/v1", "completed", "LoRA", "8", "150"]
    assert "0.7" in lines[2] and "(val)" in lines[2]
    assert "accuracy" in out.stdout
    for row in lines:
        assert row[-1].endswith("d")  # age in days


def test_runs_limits_to_the_newest_fifty_unless_all(tmp_path):
    for i in range(53):
        run = runs.allocate(tmp_path, f"r{i:02d}")
        run.write_meta(status="completed", started_at=f"2024-01-01T00:{i:02d}:00+00:00")
    short = peftlab("runs", "--runs-dir", str(tmp_path))
    assert short.returncode == 0, short.stderr
    assert "r52" in short.stdout and "r03" in short.stdout and "r02 " not in short.stdout
    assert "50 newest of 53" in short.stdout and "--all" in short.stdout
    full = peftlab("runs", "--runs-dir", str(tmp_path), "--all")
    assert "r00" in full.stdout and "newest of" not in full.stdout


def test_runs_on_an_empty_store_says_how_to_start(tmp_path):
    out = peftlab("runs", "--runs-dir", str(tmp_path / "nothing"))
    assert out.returncode == 0
    assert "no runs under" in out.stdout and "peftlab train" in out.stdout


def test_runs_reads_the_store_from_the_environment(store, tmp_path):
    env = {**os.environ, "COLUMNS": "200", "PEFTLAB_RUNS_DIR": str(store)}
    out = subprocess.run([str(SCRIPT), "runs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "lora-minilm" in out.stdout


def test_show_prints_provenance_diff_summary_and_metrics(store):
    out = peftlab("show", "lora-minilm/v1", "--runs-dir", str(store))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    run = runs.resolve("lora-minilm/v1", store)
    assert "completed" in text
    assert str(run.path) in text and str(run.adapter_dir) in text and str(run.checkpoints_dir) in text
    assert "2024-05-01T10:00:00+00:00" in text and "seed" in text and "cpu" in text
    assert "peftlab train method.rank=16 trainer.max_steps=300" in text
    assert "method.rank=16 trainer.max_steps=300" in text.split("overrides", 1)[1]
    diff_rows = {}
    for line in text.split("differences from the embedded defaults", 1)[1].split("summary", 1)[0].splitlines():
        cells = [c for c in re.split(r"[\s│┃]+", line) if c]
        if cells and cells[0].startswith(("method.", "trainer.", "seed")):
            diff_rows[cells[0]] = cells[1:]
    assert diff_rows["method.rank"] == ["8", "16"]
    assert diff_rows["trainer.max_steps"] == ["150", "300"]
    assert "trainer.batch_size" not in diff_rows  # unchanged keys are not listed
    assert "accuracy=0.8512" in text and "accuracy=0.8671" in text and "step 250" in text
    assert "accuracy=0.8601" in text
    assert "73,728 of 22,786,304" in text and "2m05s" in text and "4322" in text and "812.5 MB" in text
    assert "step=120" in text and "step=80" in text and "step=70" not in text  # the last five lines


def test_show_says_whether_the_adapter_can_be_loaded(tmp_path):
    run = _fabricate(tmp_path, "lora-minilm", started_at="2024-05-01T10:00:00+00:00", summary={})

    def adapter_line() -> str:
        out = peftlab("show", str(run.path))
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split("adapter", 1)[1].split("checkpoints", 1)[0].split())

    assert "(not written)" in adapter_line()
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    assert "no weights here" in adapter_line()  # a record kept without its weights
    (run.adapter_dir / "adapter.safetensors").write_bytes(b"")
    assert "(" not in adapter_line()


def test_show_latest_version_by_name_and_by_path(store):
    by_name = peftlab("show", "lora-minilm", "--runs-dir", str(store))
    assert by_name.returncode == 0, by_name.stderr
    assert "lora-minilm/v2" in by_name.stdout and "failed" in by_name.stdout
    assert "(no summary.json)" in by_name.stdout
    path = store / "full-minilm" / "v1"
    by_path = peftlab("show", str(path))
    assert by_path.returncode == 0, by_path.stderr
    assert "full-minilm/v1" in by_path.stdout and "same as the defaults" in by_path.stdout


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("does-not-exist", "unknown run 'does-not-exist'"),
        ("lora-minlm", "did you mean 'lora-minilm'"),
        ("lora-minilm/v9", "has no version 'v9'"),
    ],
)
def test_show_unknown_run_is_one_line_exit_2(store, spec, expected):
    out = peftlab("show", spec, "--runs-dir", str(store))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in out.stderr


def test_show_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    out = peftlab("show", str(tmp_path / "empty"), "--runs-dir", str(tmp_path))
    assert out.returncode == 2
    assert "is not a run folder" in out.stderr and len(out.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- --where, settings and sweep columns


@pytest.fixture()
def varied(tmp_path) -> Path:
    """Runs that differ in rank, learning rate and dataset; two of them members of one sweep."""
    root = tmp_path / "varied"
    for i, (rank, lr, dataset) in enumerate([(4, 0.001, "stdlib_docs"), (8, 0.001, "stdlib_docs"), (8, 0.0003, "arith")]):
        run = _fabricate(root, f"lora-tiny-{dataset}", started_at=f"2024-05-0{i + 1}T10:00:00+00:00",
                         changes={"method.rank": rank, "optimizer.lr": lr}, summary={"test": {"accuracy": 0.5 + i / 10}})
        run.write_meta(choices={"method": "lora", "model": "tiny", "dataset": dataset},
                       **({"sweep": {"path": "sweeps/grid/v2", "name": "grid", "version": "v2", "member": i}}
                          if i < 2 else {}))
    return root


def _table(out: subprocess.CompletedProcess) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line.split() for line in out.stdout.splitlines() if line.strip()]
    header = next(cells for cells in lines if cells[0] == "run")
    return header, {cells[0]: cells for cells in lines if re.fullmatch(r"[\w.-]+/v\d+", cells[0])}


def test_runs_shows_a_column_per_differing_setting_and_the_sweep(varied):
    out = peftlab("runs", "--runs-dir", str(varied))
    assert out.returncode == 0, out.stderr
    header, rows = _table(out)
    assert header == ["run", "status", "method", "rank", "lr", "dataset", "sweep", "accuracy", "age"]
    assert rows["lora-tiny-stdlib_docs/v1"][3:7] == ["4", "0.001", "stdlib_docs", "grid/v2#0"]
    assert rows["lora-tiny-stdlib_docs/v2"][3:7] == ["8", "0.001", "stdlib_docs", "grid/v2#1"]
    assert rows["lora-tiny-arith/v1"][3:7] == ["8", "0.0003", "arith", "-"]


def test_runs_where_filters_with_the_compare_syntax(varied):
    out = peftlab("runs", "--runs-dir", str(varied), "--where", "method.rank>=8", "-w", "dataset=stdlib_docs")
    assert out.returncode == 0, out.stderr
    header, rows = _table(out)
    assert list(rows) == ["lora-tiny-stdlib_docs/v2"]
    assert "rank" not in header  # one run: nothing differs
    by_sweep = _table(peftlab("runs", "--runs-dir", str(varied), "--where", "sweep=grid/v2"))[1]
    assert sorted(by_sweep) == ["lora-tiny-stdlib_docs/v1", "lora-tiny-stdlib_docs/v2"]
    none = peftlab("runs", "--runs-dir", str(varied), "--where", "seed=99")
    assert none.returncode == 0 and "match seed=99" in none.stdout


@pytest.mark.parametrize("where, says", [("method.rnak=8", "did you mean 'method.rank'"),
                                         ("method.rank>>8", "needs a number on the right")])
def test_runs_bad_where_is_one_line_exit_2(varied, where, says):
    out = peftlab("runs", "--runs-dir", str(varied), "--where", where)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0] and where in lines[0]


def test_runs_fits_80_columns_and_names_the_settings_left_out(varied):
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run([str(SCRIPT), "runs", "--runs-dir", str(varied)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert max(len(line.rstrip()) for line in out.stdout.splitlines()) <= 80
    header, rows = _table(out)
    assert len(rows) == 3
    left_out = " ".join(out.stdout.split()).partition("also differ: ")[2]
    for key, column in (("method.rank", "rank"), ("optimizer.lr", "lr"), ("dataset", "dataset")):
        assert (column in header) != (key in left_out), (key, header, left_out)  # shown, or named below
    assert "rank" in header  # what the user typed comes first


COMMANDS_READING_RUNS = ("runs", "show", "compare", "clean", "sweep", "eval", "export", "analyze", "train")


@pytest.mark.parametrize("command", COMMANDS_READING_RUNS)
def test_every_command_that_reads_runs_takes_runs_dir(command):
    out = peftlab(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "--runs-dir" in out.stdout and "PEFTLAB_RUNS_DIR" in out.stdout


def test_train_refuses_two_runs_folders(tmp_path):
    out = peftlab("train", "model=tiny", f"runs_dir={tmp_path / 'a'}", "--runs-dir", str(tmp_path / "b"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "give only one of them" in lines[0] and "Traceback" not in out.stderr


def test_show_names_the_sweep_of_a_member(varied):
    out = peftlab("show", "lora-tiny-stdlib_docs/v2", "--runs-dir", str(varied))
    assert out.returncode == 0, out.stderr
    assert "grid/v2, member #1 (sweeps/grid/v2)" in out.stdout


def test_a_name_that_is_a_folder_here_and_under_the_runs_folder_is_refused_by_every_command(tmp_path):
    """show, compare and clean once each picked another of the two: clean could remove the wrong run."""
    store, here = tmp_path / "store", tmp_path / "work"
    _fabricate(store, "lora-minilm", started_at="2024-05-01T10:00:00+00:00", summary={"test": {"accuracy": 0.8}})
    _fabricate(here, "lora-minilm", started_at="2024-05-02T10:00:00+00:00", summary={"test": {"accuracy": 0.7}})
    for command in (["show", "lora-minilm"], ["compare", "lora-minilm"], ["clean", "--runs", "lora-minilm", "--dry-run"],
                    ["eval", "lora-minilm"], ["export", "lora-minilm", str(tmp_path / "out")]):
        res = peftlab(*command, "--runs-dir", str(store), cwd=here)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (command, res.stderr)
        assert f"'lora-minilm' names two folders, '{store / 'lora-minilm'}' under the runs folder" in res.stderr, command
        assert "write './lora-minilm' for the one here" in res.stderr
    assert (store / "lora-minilm" / "v1").is_dir() and (here / "lora-minilm" / "v1").is_dir()
    shown = peftlab("show", "./lora-minilm", "--runs-dir", str(store), cwd=here)
    assert shown.returncode == 0 and str(here / "lora-minilm" / "v1") in shown.stdout.replace("\n", ""), shown.stderr
    shown = peftlab("show", "lora-minilm", "--runs-dir", str(store), cwd=tmp_path)  # one of them: no question
    assert shown.returncode == 0 and str(store / "lora-minilm" / "v1") in shown.stdout.replace("\n", ""), shown.stderr


def test_eval_of_a_name_that_is_a_run_and_an_export_here_is_refused(tmp_path):
    """After ``peftlab export lora-minilm lora-minilm``, ``eval lora-minilm`` once evaluated the export."""
    store, here = tmp_path / "store", tmp_path / "work"
    _fabricate(store, "lora-minilm", started_at="2024-05-01T10:00:00+00:00", summary={"test": {"accuracy": 0.8}})
    export = here / "lora-minilm"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"")
    res = peftlab("eval", "lora-minilm", "--runs-dir", str(store), cwd=here)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "'lora-minilm' names two folders" in res.stderr and len(res.stderr.strip().splitlines()) == 1

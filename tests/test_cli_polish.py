"""The command line's finish: --version and completion, stable sweep names, one-line errors for bad
dataset columns and damaged run folders, and an export that leaves nothing behind when it is killed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab import runs
from tests.conftest import peftlab

HEAVY = ("torch", "transformers", "datasets", "accelerate")
SCRIPT = Path(sys.executable).parent / "peftlab"


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a refused command (exit code 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> runs.Run:
    """One real, completed run of the tiny model (a few seconds), copied by the tests that damage it."""
    root = tmp_path_factory.mktemp("tiny-runs")
    result = peftlab("train", "model=tiny", "trainer.max_steps=2", "trainer.eval_every=0", "trainer.checkpoint_every=0",
                     "name=tiny", "-q", env={"PEFTLAB_RUNS_DIR": str(root)})
    assert result.returncode == 0, result.stderr
    run = runs.resolve("tiny", root)
    assert run.status == "completed" and (run.adapter_dir / "adapter.safetensors").is_file()
    return run


def copy_run(run: runs.Run, root: Path, name: str = "tiny") -> runs.Run:
    shutil.copytree(run.path, root / name / "v1")
    return runs.Run(root / name / "v1")


# --------------------------------------------------------------------------- 1. --version, completion


def test_version_prints_the_installed_version():
    result = peftlab("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"peftlab {importlib.metadata.version('peftlab')}\n"


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_import_no_heavy_library(argv):
    # -X importtime lists every module the process imported, on stderr.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "peftlab", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_help_offers_shell_completion():
    result = peftlab("--help")
    assert result.returncode == 0
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="the peftlab console script is not installed next to this Python")
def test_completion_completes_command_names():
    # What the installed shell function does on `peftlab tr<TAB>`.
    env = {**os.environ, "_PEFTLAB_COMPLETE": "complete_bash", "COMP_WORDS": "peftlab tr", "COMP_CWORD": "1"}
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["train"]


# --------------------------------------------------------------------------- 2. sweep names


def _dry_run_name(*overrides: str) -> str:
    result = peftlab("sweep", "model=tiny", *overrides, "--dry-run")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("sweep "), result.stdout
    return first.split()[1].rstrip(":")


def test_sweep_name_does_not_depend_on_the_order_of_the_arguments(runs_dir):
    assert _dry_run_name("seed=0,1", "method=lora,pissa") == _dry_run_name("method=lora,pissa", "seed=0,1") == "method-seed"
    assert _dry_run_name("seed=0,1", "method.rank=2,4", "method=lora,pissa") == "method-method.rank-seed"
    assert not runs_dir.exists()  # a dry run creates nothing


def test_default_sweep_name_sorts_the_swept_keys():
    from peftlab.sweep.planning import default_name

    assert default_name(["seed", "method", "hydra/launcher"]) == default_name(["method", "hydra/launcher", "seed"])
    assert default_name([]) == "sweep"


# --------------------------------------------------------------------------- 3. dataset columns


@pytest.mark.parametrize("override, needles", [
    ("dataset.text_field=no_such_column", ["dataset.text_field='no_such_column'", "text", "label"]),
    ("dataset.label_field=labl", ["dataset.label_field='labl'", "did you mean 'label'"]),
])
def test_unknown_column_of_the_builtin_dataset_is_one_line(runs_dir, override, needles):
    line = one_error_line(peftlab("train", "model=tiny", "trainer.max_steps=2", override))
    for needle in needles:
        assert needle in line, line
    assert not runs_dir.exists()


@pytest.mark.parametrize("override, needles", [
    ("dataset.text_field=revew", ["dataset.text_field='revew'", "columns: review, stars", "did you mean 'review'"]),
    ("dataset.label_field=no_such_column", ["dataset.label_field='no_such_column'", "columns: review, stars"]),
])
def test_unknown_column_of_a_data_file_is_one_line(runs_dir, tmp_path, override, needles):
    data = tmp_path / "reviews.csv"
    data.write_text("review,stars\nlovely,good\nawful,bad\n" * 10)
    fields = {"dataset.text_field": "review", "dataset.label_field": "stars"}
    fields[override.partition("=")[0]] = override.partition("=")[2]
    line = one_error_line(peftlab("train", "model=tiny", "dataset=hf", f"dataset.path={data}",
                                  *(f"{k}={v}" for k, v in fields.items())))
    for needle in needles:
        assert needle in line, line
    assert not runs_dir.exists()


def test_a_broken_jsonl_line_is_named(runs_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": \n{"text": "c", "label": 1}\n')
    line = one_error_line(peftlab("train", "model=tiny", "dataset=hf", f"dataset.path={data}"))
    assert f"{data} line 2" in line


# --------------------------------------------------------------------------- 4. interrupted export


def _staging_leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def _export_and_signal(run: runs.Run, out: Path, signum: int) -> subprocess.Popen:
    """Start a merged export and send ``signum`` as soon as its staging folder appears."""
    def default_sigint():  # a child of a background job may inherit SIGINT ignored; Ctrl-C is not ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "export", str(run.path), str(out), "--format", "merged"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(out.parent.glob(f".{out.name}.export-*")):
            proc.send_signal(signum)
            break
        time.sleep(0.001)
    proc.wait(timeout=120)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_export_leaves_no_staging_folder_and_no_partial_output(tiny_run, tmp_path, signum):
    out = tmp_path / "merged"
    for _attempt in range(5):  # the tiny export is quick: when it wins the race, try again
        proc = _export_and_signal(tiny_run, out, signum)
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr, stderr
        assert _staging_leftovers(out) == []
        if proc.returncode == 0:
            shutil.rmtree(out)
            continue
        assert proc.returncode == 130, (proc.returncode, stderr)
        # Either nothing was published, or the signal came after the complete folder was moved into place.
        assert not out.exists() or (out / "peftlab_export.json").is_file()
        return
    pytest.fail("the export finished before the signal every time")


def test_staging_is_removed_on_keyboard_interrupt_and_the_old_output_kept(tmp_path):
    from peftlab.staged_output import staged

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged(out) as tmp:
            (tmp / "half.bin").write_bytes(b"\0" * 1000)
            raise KeyboardInterrupt
    assert _staging_leftovers(out) == [] and (out / "old.txt").read_text() == "old"
    with staged(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and _staging_leftovers(out) == []


@pytest.mark.parametrize("where, message", [
    ("store/lora/v1/checkpoints", "is in run folder"),  # a run's own checkpoints
    ("store/lora/v1/adapter", "is in run folder"),  # its adapter
    ("store/lora/v1", "is in run folder"),  # the run
    ("store", "holds"),  # a folder of runs, one level down or more
    ("store/sweeps", "holds"),  # a folder of sweeps
])
def test_force_never_replaces_a_run_or_a_folder_holding_one(tmp_path, where, message):
    from peftlab.errors import UserError
    from peftlab.staged_output import check_output

    run = tmp_path / "store" / "lora" / "v1"
    (run / "checkpoints" / "step_0000002").mkdir(parents=True)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter.safetensors").write_bytes(b"weights")
    (run / "meta.json").write_text("{}")
    (tmp_path / "store" / "sweeps" / "grid" / "v1").mkdir(parents=True)
    (tmp_path / "store" / "sweeps" / "grid" / "v1" / "sweep.json").write_text("{}")
    with pytest.raises(UserError, match=message):
        check_output(tmp_path / where, force=True)
    mine = tmp_path / "exports" / "old"
    mine.mkdir(parents=True)
    (mine / "adapter_config.json").write_text("{}")
    check_output(mine, force=True)  # an earlier export: --force may replace it


# --------------------------------------------------------------------------- 5. damaged run folders


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _set_meta(run: runs.Run, **fields) -> None:
    meta = json.loads(run.meta_path.read_text())
    meta.update(fields)
    run.meta_path.write_text(json.dumps(meta))


DAMAGE = {
    # name: (what to do to the copied run, the file the message names, a word of the fix)
    "meta not JSON": (lambda r: r.meta_path.write_text("{nope"), "meta.json", "restore"),
    "meta empty": (lambda r: r.meta_path.write_text(""), "meta.json", "restore"),
    "meta a list": (lambda r: r.meta_path.write_text("[1, 2]"), "meta.json", "restore"),
    "summary not JSON": (lambda r: r.summary_path.write_text('{"test": {'), "summary.json", "restore"),
    "summary a string": (lambda r: r.summary_path.write_text('"done"'), "summary.json", "restore"),
    "weights missing": (lambda r: (r.adapter_dir / "adapter.safetensors").unlink(), "adapter.safetensors", "train it again"),
    "weights cut in the header": (lambda r: _truncate(r.adapter_dir / "adapter.safetensors", 100),
                                  "adapter.safetensors", "train it again"),
    "weights cut in the data": (lambda r: _truncate(r.adapter_dir / "adapter.safetensors", -64),
                                "adapter.safetensors", "train it again"),
    "adapter config not JSON": (lambda r: (r.adapter_dir / "adapter_config.json").write_text("config: yes"),
                                "adapter_config.json", "train it again"),
    "adapter config without labels": (lambda r: (r.adapter_dir / "adapter_config.json").write_text('{"config": {}}'),
                                      "adapter_config.json", "train it again"),
    "never finished": (lambda r: (shutil.rmtree(r.adapter_dir), r.summary_path.unlink(),
                                  _set_meta(r, status="interrupted")), "resume=tiny/v1", "resume"),
    # the adapter is saved before the summary: a run can fail after it, or be resumed with the old one in place
    "failed after its adapter": (lambda r: (r.summary_path.unlink(), _set_meta(r, status="failed")),
                                 "did not complete (status: failed)", "resume=tiny/v1"),
    "resumed, its process gone": (lambda r: _set_meta(r, status="running", pid=_dead_pid()),
                                  "did not complete (status: running)", "resume=tiny/v1"),
}
RUN_FILES = ("meta not JSON", "meta empty", "meta a list", "summary not JSON", "summary a string")
MODEL_COMMANDS = {
    "eval": ["eval", "tiny"],
    "export": ["export", "tiny", "{tmp}/out"],
    "analyze": ["analyze", "tiny"],
}
COMMANDS = {**MODEL_COMMANDS, "show": ["show", "tiny"], "runs": ["runs"]}
MATRIX = [(c, d) for c in COMMANDS for d in DAMAGE if c in MODEL_COMMANDS or d in RUN_FILES]


@pytest.mark.parametrize("command, damage", MATRIX, ids=[f"{c}-{d.replace(' ', '_')}" for c, d in MATRIX])
def test_damaged_run_folder_is_one_line_naming_the_file_and_the_fix(tiny_run, runs_dir, tmp_path, command, damage):
    run = copy_run(tiny_run, runs_dir)
    hurt, file, fix = DAMAGE[damage]
    hurt(run)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    line = one_error_line(peftlab(*argv))
    assert file in line and fix in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_a_run_a_live_process_writes_is_not_read_as_a_result(tiny_run, runs_dir, tmp_path, command):
    run = copy_run(tiny_run, runs_dir)
    with run.own():  # as a resumed run is, while it trains: its old adapter still in place
        _set_meta(run, status="running", pid=os.getpid())
        argv = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
        line = one_error_line(peftlab(*argv))
    assert f"run 'tiny/v1' is being written by process {os.getpid()}: wait until it completes" in line, line
    assert not (tmp_path / "out").exists() and not (run.path / "analysis.json").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_still_lists_every_run_when_one_is_damaged(tiny_run, runs_dir):
    copy_run(tiny_run, runs_dir, "good")
    copy_run(tiny_run, runs_dir, "bad").summary_path.write_text("[]")
    result = peftlab("runs")
    line = one_error_line(result)
    assert "bad/v1/summary.json" in line
    rows = {row.split()[0]: row.split()[1] for row in result.stdout.splitlines()
            if row.split()[:1] in (["good/v1"], ["bad/v1"])}
    assert rows == {"good/v1": "completed", "bad/v1": "damaged"}


@pytest.mark.parametrize("command", ["show", "runs"])
def test_an_unfinished_run_is_shown_not_refused(tiny_run, runs_dir, command):
    run = copy_run(tiny_run, runs_dir)
    DAMAGE["never finished"][0](run)
    result = peftlab(*COMMANDS[command])
    assert result.returncode == 0 and "interrupted" in result.stdout, result.stderr


@pytest.mark.parametrize("code, words", [
    ("ENOSPC", "no space left on the device"),
    ("EROFS", "the file system is read-only"),
    ("EACCES", "permission denied"),
    ("ENOENT", "a folder on that path does not exist"),
    ("ENOTDIR", "a part of that path is a file, not a folder"),
    ("EISDIR", "it is a folder where a file was to be written"),
    ("EEXIST", "something of that name is already there"),
])
def test_a_file_system_failure_is_one_line_naming_the_path(code, words):
    import errno

    from peftlab.errors import storage_problem

    line = storage_problem(OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/data/out/report.html"))
    assert line is not None and words in line and "'/data/out/report.html'" in line and "\n" not in line
    assert storage_problem(OSError(errno.EPIPE, "Broken pipe")) is None  # not the file system's: not dressed up as one

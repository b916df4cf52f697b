"""Every user mistake: one line naming the bad value and the fix, exit code 2, no traceback,
and no run marked completed.

The catalogue below is run through the real command line, one subprocess per case,
each in its own folder (its runs/ and data files), two cases at a time. Most cases
fail before a model is loaded, so the whole catalogue takes about a minute.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from peftlab import runs
from tests.conftest import peftlab

TINY = ("model=tiny", "trainer.max_steps=2")


@dataclasses.dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    needles: tuple[str, ...] = ()  # each must appear in the error line
    setup: Callable[[Path, runs.Run], None] | None = None  # (the case's folder, a completed tiny run)


def train(*args: str, needles: tuple[str, ...] = (), setup=None) -> Case:
    return Case(("train", *args), needles, setup)


# --------------------------------------------------------------------------- setups


def write(name: str, text: str) -> Callable[[Path, runs.Run], None]:
    def setup(folder: Path, _run: runs.Run) -> None:
        (folder / name).write_text(text)
    return setup


def store(folder: Path, run: runs.Run) -> runs.Run:
    """A copy of the tiny run in this case's runs/ (as runs/tiny/v1)."""
    shutil.copytree(run.path, folder / "runs" / "tiny" / "v1")
    return runs.Run(folder / "runs" / "tiny" / "v1")


def damaged(hurt: Callable[[runs.Run], object]) -> Callable[[Path, runs.Run], None]:
    def setup(folder: Path, run: runs.Run) -> None:
        hurt(store(folder, run))
    return setup


QA = '{"question": "2 + 2?", "answer": "4"}\n{"question": "3 + 3?", "answer": "6"}\n'


def _plain_lm(folder: Path) -> None:
    """The tiny LM's files with its tokenizer's chat template removed."""
    shutil.copytree(Path(__file__).resolve().parents[1] / "peftlab" / "assets" / "tiny_lm", folder)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    for extra in folder.glob("chat_template.*"):
        extra.unlink()


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _unfinished(run: runs.Run) -> None:
    shutil.rmtree(run.adapter_dir)
    run.summary_path.unlink()
    meta = json.loads(run.meta_path.read_text())
    run.meta_path.write_text(json.dumps({**meta, "status": "failed"}))


CSV = "review,stars\n" + "lovely,good\nawful,bad\n" * 10

CASES: dict[str, Case] = {
    # config
    "unknown method": train("method=lorra", needles=("lorra", "did you mean 'lora'")),
    "unknown model": train("model=tinny", needles=("tinny", "did you mean 'tiny'")),
    "unknown dataset": train("dataset=stdlib", needles=("stdlib", "stdlib_docs")),
    "unknown regularizer": train("regularizer=[l3]", needles=("l3", "l2_pretrained")),
    "negative regularizer weight": train("regularizer=[orthonormal]", "regularizer.orthonormal.weight=-1e-3",
                                         needles=("regularizer.orthonormal.weight=-0.001", ">= 0")),
    "regularizer the method cannot serve": train("method=full", "regularizer=[orthonormal]",
                                                 needles=("orthonormal", "factor matrices", "lora", "sorsa")),
    "ba_svd k zero": train("method=ba_lora", "regularizer.ba_svd.k=0", needles=("regularizer.ba_svd.k=0", ">= 1")),
    "unknown key": train("trainer.max_stepz=3", needles=("trainer.max_stepz", "did you mean 'trainer.max_steps'")),
    "unknown root key": train("sed=3", needles=("'sed'", "did you mean 'seed'")),
    "steps not a number": train("trainer.max_steps=many", needles=("trainer.max_steps", "many")),
    "lr not a number": train("optimizer.lr=fast", needles=("optimizer.lr", "fast")),
    "unknown schedule": train("trainer.schedule=wavy", needles=("trainer.schedule=wavy", "cosine")),
    "malformed override": train("method.rank==", needles=("method.rank==",)),
    "rank zero": train(*TINY, "method.rank=0", needles=("method.rank=0", ">= 1")),
    "rank larger than the layer": train(*TINY, "method.rank=65", needles=("method.rank=65", "<= 64")),
    "targets match nothing": train(*TINY, "method.target_modules=[nothing_here]", needles=("nothing_here",)),
    "miss unknown mode": train(*TINY, "method=miss", "method.mode=bone", needles=("method.mode=bone", "bat")),
    "miss bat rank not dividing": train(*TINY, "method=miss", "method.mode=bat", "method.rank=48",
                                        needles=("method.rank=48", "mode=bat")),
    "randlora unknown bases": train(*TINY, "method=randlora", "method.bases=gauss", needles=("method.bases=gauss", "dense")),
    "dora detach_norm not a bool": train(*TINY, "method=dora", "method.detach_norm=maybe",
                                         needles=("method.detach_norm=maybe", "true or false")),
    "sara theta zero": train(*TINY, "method=sara", "method.theta=0", needles=("method.theta=0", "> 0")),
    "sara theta selects nothing": train(*TINY, "method=sara", "method.theta=1e-12", needles=("method.theta=1e-12",
                                                                                           "selects no weight")),
    "hft round_steps zero": train(*TINY, "method=hft", "method.round_steps=0", needles=("method.round_steps=0",)),
    "sst resvd_steps zero": train(*TINY, "method=sst", "method.resvd_steps=0", needles=("method.resvd_steps=0",)),
    "adalora budget above the initial rank": train(*TINY, "method=adalora", "method.target_rank=16",
                                                   needles=("method.target_rank=16", "method.rank=12")),
    "adalora phases longer than the run": train(*TINY, "method=adalora", "method.t_init=500", "method.t_final=1500",
                                                needles=("method.t_init=500", "trainer.max_steps=2")),
    "adalora fraction out of range": train(*TINY, "method=adalora", "method.t_final=1.5",
                                           needles=("method.t_final=1.5", "[0, 1)")),
    "lr zero": train("optimizer.lr=0", needles=("optimizer.lr=0", "> 0")),
    "lr negative": train("optimizer.lr=-0.001", needles=("optimizer.lr=-0.001", "> 0")),
    "batch size zero": train("trainer.batch_size=0", needles=("trainer.batch_size=0", ">= 1")),
    "max_steps negative": train("trainer.max_steps=-1", needles=("trainer.max_steps=-1", ">= 0")),
    "fp16 on the CPU": train(*TINY, "trainer.precision=fp16", "trainer.cpu=true", needles=("trainer.precision=fp16",)),
    "name with a slash": train(*TINY, "name=a/b", needles=("name='a/b'",)),
    "model path missing": train("model=hf", "model.name=./no/such/model", needles=("./no/such/model", "does not exist")),
    "model name missing": train("model=hf", needles=("model.name", "must be set")),
    "builtin text column": train(*TINY, "dataset.text_field=no_such_column", needles=("no_such_column", "label")),
    "builtin label column": train(*TINY, "dataset.label_field=labl", needles=("labl", "did you mean 'label'")),
    # data files
    "data file missing": train(*TINY, "dataset=hf", "dataset.path=./missing.csv", needles=("./missing.csv", "does not exist")),
    "empty csv": train(*TINY, "dataset=hf", "dataset.path=./empty.csv", needles=("empty.csv", "empty"),
                       setup=write("empty.csv", "review,stars\n")),
    "csv without the label column": train(
        *TINY, "dataset=hf", "dataset.path=./reviews.csv", "dataset.text_field=review",
        needles=("dataset.label_field='label'", "columns: review, stars"), setup=write("reviews.csv", CSV)),
    "unknown text column": train(
        *TINY, "dataset=hf", "dataset.path=./reviews.csv", "dataset.text_field=revew", "dataset.label_field=stars",
        needles=("revew", "did you mean 'review'"), setup=write("reviews.csv", CSV)),
    "jsonl with a broken line": train(
        *TINY, "dataset=hf", "dataset.path=./data.jsonl", needles=("data.jsonl line 2",),
        setup=write("data.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": \n')),
    "unknown file extension": train(*TINY, "dataset=hf", "dataset.path=./data.xlsx", needles=("'.xlsx'", ".csv"),
                                    setup=write("data.xlsx", "not a spreadsheet")),
    # causal language models
    "encoder model for an LM task": train(*TINY, "dataset=arith", needles=("bert", "not a causal language model")),
    "sft data without the response column": train(
        "model=tiny_lm", "trainer.max_steps=2", "dataset=sft", "dataset.path=./qa.jsonl", "dataset.prompt_field=question",
        needles=("dataset.response_field='response'", "answer"), setup=write("qa.jsonl", QA)),
    "every prompt longer than max_length": train("model=tiny_lm", "trainer.max_steps=2", "dataset=arith",
                                                 "model.max_length=8", needles=("model.max_length=8",)),
    "chat template missing": train("model=hf", "model.name=./plain-lm", "model.random_init=true", "trainer.max_steps=2",
                                   "dataset=arith",
                                   "task.chat_template=true", needles=("chat template", "chat_template=false"),
                                   setup=lambda folder, _run: _plain_lm(folder / "plain-lm")),
    "LM metric the task does not measure": train("model=tiny_lm", "dataset=arith", "trainer.metric=accuracy",
                                                 needles=("accuracy", "exact_match")),
    # commands on runs that do not exist
    "show unknown run": Case(("show", "nope"), ("unknown run 'nope'",)),
    "eval unknown run": Case(("eval", "tinny"), ("tinny", "did you mean 'tiny'"), store),
    "export unknown run": Case(("export", "nope", "out"), ("unknown run 'nope'",)),
    "analyze unknown run": Case(("analyze", "tiny/v7"), ("v7", "v1"), store),
    # damaged run folders
    "show: meta.json not JSON": Case(("show", "tiny"), ("meta.json",), damaged(lambda r: r.meta_path.write_text("{"))),
    "runs: meta.json a list": Case(("runs",), ("meta.json",), damaged(lambda r: r.meta_path.write_text("[]"))),
    "show: summary.json not an object": Case(("show", "tiny"), ("summary.json",),
                                             damaged(lambda r: r.summary_path.write_text("3"))),
    "eval: adapter weights missing": Case(("eval", "tiny"), ("adapter.safetensors",),
                                          damaged(lambda r: (r.adapter_dir / "adapter.safetensors").unlink())),
    "export: adapter weights truncated": Case(("export", "tiny", "out"), ("adapter.safetensors", "truncated"),
                                              damaged(lambda r: _cut(r.adapter_dir / "adapter.safetensors", -10))),
    "analyze: adapter_config.json not JSON": Case(("analyze", "tiny"), ("adapter_config.json",),
                                                  damaged(lambda r: (r.adapter_dir / "adapter_config.json").write_text("{"))),
    "export: run never finished": Case(("export", "tiny", "out"), ("tiny/v1", "resume"), damaged(_unfinished)),
    # sweeps
    "sweep malformed grid": Case(("sweep", "model=tiny", "method.rank=4,,8"), ("method.rank=4,,8",)),
    "sweep without values": Case(("sweep", "model=tiny", "seed=range(3,3)"), ("seed=range(3,3)",)),
    "sweep continue of a run": Case(("sweep", "--continue", "runs/tiny/v1"), ("runs/tiny/v1", "sweep.json"), store),
    # compare
    "compare missing path": Case(("compare", "./nowhere"), ("nowhere",)),
    "compare bad --where": Case(("compare", "runs", "--where", "method.rank>>8"), ("method.rank>>8",), store),
    "compare unknown --metric": Case(("compare", "runs", "--metric", "acuracy"), ("acuracy", "did you mean 'accuracy'"),
                                     store),
    "compare unknown --format": Case(("compare", "runs", "--format", "yaml"), ("yaml", "markdown"), store),
    "compare unknown run name": Case(("compare", "tinny", "--runs-dir", "runs"), ("tinny", "--runs-dir"), store),
    # managing runs
    "runs --where unknown key": Case(("runs", "--where", "method.rnak=8"), ("method.rnak=8", "did you mean"), store),
    "unknown calibration dataset": train(*TINY, "method=corda", "method.calibration.dataset=stdlib",
                                         needles=("method.calibration.dataset=stdlib", "stdlib_docs")),
    "calibration split that does not exist": train(*TINY, "method=eva", "method.calibration.split=dev",
                                                   needles=("method.calibration.split=dev", "validation")),
    "eva rho below 1": train(*TINY, "method=eva", "method.rho=0.5", needles=("method.rho=0.5", ">= 1")),
    "corda unknown mode": train(*TINY, "method=corda", "method.mode=ipm", needles=("method.mode=ipm", "kpa")),
    "clean --runs without a selection": Case(("clean", "--runs"), ("--runs", "--where"), store),
    "clean unknown run": Case(("clean", "--runs", "nope", "--yes"), ("nope",), store),
    "sweep --status of a run": Case(("sweep", "--status", "runs/tiny/v1"), ("runs/tiny/v1", "sweep.json"), store),
}

PARAMS = list(CASES)


# --------------------------------------------------------------------------- running the catalogue


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> runs.Run:
    """A completed run folder as training leaves it, written directly (training one would take longer
    than the whole catalogue's mistakes, which all stop before a model is loaded)."""
    from omegaconf import OmegaConf
    from safetensors.numpy import save_file

    from peftlab.config import compose

    cfg = compose(list(TINY))
    run = runs.allocate(tmp_path_factory.mktemp("tiny-runs"), "tiny")
    run.write_meta(**runs.new_meta(["peftlab", "train", *TINY], seed=0, device="cpu"), choices={"method": "lora"})
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True), list(TINY))
    run.write_summary({"test": {"accuracy": 0.5, "f1_macro": 0.4, "loss": 1.9}, "metric": "accuracy", "steps": 2})
    run.adapter_dir.mkdir()
    weights = {"classifier.weight": np.zeros((7, 64), dtype=np.float32)}
    save_file(weights, str(run.adapter_dir / "adapter.safetensors"))
    info = {"config": OmegaConf.to_container(cfg, resolve=True), "labels": [str(i) for i in range(7)],
            "parameters": sorted(weights), "source": "tiny"}
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps(info))
    run.set_status("completed")
    return run


def completed(root: Path) -> set[Path]:
    return {run.path for run in runs.list_runs(root) if run.status == "completed"}


def run_case(name: str, folder: Path, tiny: runs.Run) -> tuple[subprocess.CompletedProcess, set[Path], set[Path]]:
    """``(result, completed runs before, after)`` of one case, run in its own folder."""
    case = CASES[name]
    folder.mkdir(parents=True)
    if case.setup is not None:
        case.setup(folder, tiny)
    before = completed(folder / "runs")
    result = peftlab(*case.argv, cwd=folder, env={"PEFTLAB_RUNS_DIR": str(folder / "runs"), "OMP_NUM_THREADS": "1"},
                     timeout=300)
    return result, before, completed(folder / "runs")


@pytest.fixture(scope="module")
def outcomes(request, tiny_run, tmp_path_factory) -> dict:
    """Run the selected cases two at a time (each mostly waits on imports and the interpreter)."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input_is_one_line_exit_2" and hasattr(item, "callspec")]
    base = tmp_path_factory.mktemp("catalogue")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {n: pool.submit(run_case, n, base / f"case{i}", tiny_run) for i, n in enumerate(selected)}
        return {n: f.result() for n, f in futures.items()}


@pytest.mark.parametrize("name", PARAMS)
def test_bad_input_is_one_line_exit_2(outcomes, name):
    result, before, after = outcomes[name]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-1000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in CASES[name].needles:
        assert needle in lines[0], (needle, lines[0])
    assert after <= before, sorted(after - before)  # no run was marked completed


def test_catalogue_covers_enough_mistakes():
    assert len(CASES) >= 30


def test_local_csv_with_column_mapping_trains(runs_dir, tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text(CSV)
    result = peftlab("train", "model=tiny", "dataset=hf", f"dataset.path={data}", "dataset.text_field=review",
                     "dataset.label_field=stars", "trainer.max_steps=3", "trainer.batch_size=4", "-q")
    assert result.returncode == 0, result.stderr
    assert runs.list_runs(runs_dir)[0].status == "completed"
    assert runs.list_runs(runs_dir)[0].name == "lora-tiny-reviews"  # named after the local file, not the loader


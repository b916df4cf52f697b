"""``peftlab eval PATH``: metrics of a run's trained model, or of an exported folder, on one split."""

from __future__ import annotations

from typing import List, Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option
from peftlab.run_files import check_trained

SPLITS = ("test", "validation", "train")


@app.command("eval")
def eval_command(
    path: str = typer.Argument(..., help="a run (folder, name or name/vN) or an exported folder (merged model or PEFT adapter)"),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="another dataset to evaluate a run on: dataset=NAME and dataset.* overrides "
        "(a classifier's dataset must have the run's classes)"),
    split: str = typer.Option("test", "--split", help="test | validation | train"),
    run: Optional[str] = typer.Option(None, "--run", help="for an exported folder: the run whose data to use "
                                      "(default: the run recorded in the folder's peftlab_export.json)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="evaluation batch size (default: the run's trainer.eval_batch_size)"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as one JSON object"),
    runs_dir: Optional[str] = runs_dir_option(),
) -> None:
    """Loss, accuracy and macro-F1 on a split; the same numbers for a run and for its exports."""
    import sys
    import warnings
    from pathlib import Path

    from peftlab import runs
    from peftlab.errors import UserError, did_you_mean

    if split not in SPLITS:
        raise UserError(f"--split {split} is not known{did_you_mean(split, SPLITS)}: use one of {', '.join(SPLITS)}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size} is not allowed: use an integer >= 1")
    warnings.filterwarnings("ignore")  # library deprecation notes do not concern the user (as in train)
    root = runs.runs_root(runs_dir)
    # a bare name that is a folder here and under the runs folder is ambiguous, refused (typed_folder)
    folder = runs.typed_folder(path, root) or Path(path).expanduser()
    from peftlab.exported import is_model_folder, is_peft_folder

    if folder.is_dir() and (is_model_folder(folder) or is_peft_folder(folder)):
        if overrides:
            raise UserError(f"'{overrides[0]}': another dataset is for runs; an exported folder uses its run's data")
        metrics = _evaluate_export(folder, run, root, split, batch_size)
        label = str(folder)
    else:
        if run is not None:
            raise UserError("--run is for exported folders; a run is evaluated on its own data or dataset=...")
        target = runs.resolve(path, root)
        dataset = _dataset_node(list(overrides or []), target)
        metrics = _evaluate_run(target, split, batch_size, dataset, _dataset_label(overrides or []))
        label = target.label + (f" on dataset {_dataset_label(overrides)}" if dataset is not None else "")
    if metrics.get("dropped"):
        print(f"warning: {metrics['dropped']} {split} example(s) do not fit the model's max_length and were left "
              "out: the metrics are over the rest (raise model.max_length to score them)", file=sys.stderr)
    if as_json:
        print(runs.to_json({"split": split, **metrics}))
        return
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    counts = "  ".join(f"{v} {k}" for k, v in metrics.items() if isinstance(v, int) and not isinstance(v, bool))
    console.print(f"{label} [{split}, {counts}]: {shown}", markup=False, highlight=False, soft_wrap=True)


def _evaluate_export(folder, run: Optional[str], root, split: str, batch_size: Optional[int]) -> dict:
    """An exported folder, on the data of ``run`` (or of the run recorded in the folder)."""
    from peftlab.exported import evaluate_model, load_export

    cfg = _run_config(run, root) if run is not None else None
    model, tokenizer, cfg, max_length = load_export(folder, cfg)
    return evaluate_model(model, tokenizer, cfg, max_length, split, batch_size)


def _run_config(run: str, root):
    """The resolved config.yaml of ``run``; a missing or damaged one is a UserError."""
    from omegaconf import DictConfig, OmegaConf

    from peftlab import runs
    from peftlab.errors import UserError

    source = runs.resolve(run, root)
    path = source.config_path
    if not path.is_file():
        raise UserError(f"run '{run}' has no config.yaml: pick a run that started training")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML and OmegaConf raise many types for a damaged file
        raise UserError(f"'{path}' cannot be read ({str(exc).splitlines()[0]}): pick another run with --run") from None
    if not isinstance(cfg, DictConfig) or "dataset" not in cfg:
        raise UserError(f"'{path}' is not a run's resolved config (no dataset): pick another run with --run")
    return cfg


def _dataset_node(overrides: List[str], target):
    """The dataset config node ``dataset=...`` / ``dataset.*`` overrides compose to; None without any.

    The dataset must be made for the run's task (a classifier cannot be scored on word
    problems, nor a language model on labelled texts): its YAML selects the task it is for.
    """
    from peftlab.config import compose
    from peftlab.errors import UserError
    from peftlab.sweep.planning import key_of

    if not overrides:
        return None
    for o in overrides:
        key = key_of(o)
        if key != "dataset" and not key.startswith("dataset."):
            raise UserError(f"'{o}': peftlab eval takes only dataset=... and dataset.* overrides (the model is the run's)")
    if not any(key_of(o) == "dataset" for o in overrides):
        raise UserError("name the dataset to evaluate on: dataset=NAME (then dataset.* options if it needs them)")
    composed = compose(overrides)
    theirs = str(composed.task.get("_target_", ""))
    ours = str(((target.config or {}).get("task") or {}).get("_target_", ""))
    if ours and theirs and ours != theirs:
        raise UserError(f"dataset {_dataset_label(overrides)} is made for the {_task_name(theirs)} task, and run "
                        f"'{target.label}' was trained for {_task_name(ours)}: evaluate it on a {_task_name(ours)} "
                        "dataset")
    return composed.dataset


def _task_name(target: str) -> str:
    """``causal LM`` of ``peftlab.tasks.causal_lm.CausalLM``."""
    return {"CausalLM": "causal LM", "Classification": "classification"}.get(target.rsplit(".", 1)[-1],
                                                                              target.rsplit(".", 1)[-1])


def _dataset_label(overrides) -> str:
    return " ".join(o.partition("=")[2] if o.startswith("dataset=") else o for o in overrides)


def _evaluate_run(target, split: str, batch_size: Optional[int], dataset=None, dataset_label: str = "") -> dict:
    """A run's own trained model, on its own data (or on ``dataset``, a dataset config node)."""
    check_trained(target)  # before torch: a damaged folder is one line, not a library's traceback
    from peftlab.experiment import load_trained, load_trained_on
    from peftlab.exported import evaluate_split

    if dataset is not None:
        exp = load_trained_on(target.path, dataset, dataset_label)
    else:
        exp = load_trained(target.path, with_data=True)
    return evaluate_split(exp.task, exp.model, exp.tokenizer, exp.splits, split,
                          batch_size or int(exp.cfg.trainer.eval_batch_size))

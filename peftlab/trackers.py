"""Experiment trackers: the run's metric lines, resolved config and folder, in the tracker a researcher uses.

``trainer.log_with=[tensorboard]`` (also ``wandb``, ``mlflow``, ``aim`` when installed)
goes through accelerate's tracker integration. Every line written to metrics.jsonl
is logged too, as ``<split>/<key>`` at its step; the resolved config (flattened to
``a.b.c`` keys) and ``run_folder`` are the run's parameters. Offline by default,
inside the run folder:

* tensorboard: event files in ``<run>/trackers/<run name>/``;
* wandb: ``WANDB_MODE=offline`` unless the environment sets a mode, files under ``<run>/trackers``;
* mlflow: a file store at ``<run>/trackers/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set;
* aim: its repository in ``<run>/trackers``.

metrics.jsonl stays the run's record (``compare``, ``show`` and resume read it); a
tracker is a view of it. After a resume a tracker receives the steps after the
checkpoint again, as metrics.jsonl does.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftlab.errors import UserError, did_you_mean

#: tracker name -> the module that must be importable
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim"}
FOLDER = "trackers"


def check(names: Sequence[str]) -> list[str]:
    """The tracker names, or a one-line UserError for an unknown or uninstalled one."""
    names = [str(n) for n in names]
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"trainer.log_with={name} is not a tracker{did_you_mean(name, list(TRACKERS))}: "
                            f"use any of {', '.join(TRACKERS)}, e.g. trainer.log_with=[tensorboard]")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"trainer.log_with={name} needs the {name} package: pip install {name}")
    return names


def accelerator_options(names: Sequence[str], run_path: Path) -> dict[str, Any]:
    """What ``Accelerator(...)`` needs to log to ``names`` inside the run folder ({} without trackers)."""
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    folder = Path(run_path) / FOLDER
    return {"log_with": list(names), "project_config": ProjectConfiguration(project_dir=str(folder),
                                                                            logging_dir=str(folder))}


def start(accelerator: Any, names: Sequence[str], run_path: Path, run_name: str, config: dict) -> None:
    """Open every tracker with the run's parameters (the flattened config and the run folder)."""
    if not names:
        return
    folder = Path(run_path) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("MLFLOW_TRACKING_URI", (folder / "mlruns").resolve().as_uri())
    init = {"wandb": {"dir": str(folder), "name": run_name}, "aim": {"repo": str(folder)}}
    params = {**flatten(config), "run_folder": str(Path(run_path).resolve())}
    accelerator.init_trackers(run_name.replace("/", "-"), config=params,
                              init_kwargs={k: v for k, v in init.items() if k in names})


def log(accelerator: Any, names: Sequence[str], record: dict) -> None:
    """One metrics.jsonl line: its numbers as ``<split>/<key>`` at its step."""
    if not names:
        return
    split = record.get("split", "train")
    values = {f"{split}/{k}": float(v) for k, v in record.items()
              if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    accelerator.log(values, step=int(record["step"]))


def end(accelerator: Any, names: Sequence[str]) -> None:
    if names:
        accelerator.end_training()


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1}`` from ``{"a": {"b": 1}}``; lists and other values as text (trackers take scalars)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if node is None or isinstance(node, (bool, int, float, str)):
        return {key: node if node is not None else "null"}
    return {key: str(node)}

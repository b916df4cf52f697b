"""How a run folder is named when ``name=`` is not given: ``<method>-<model>-<dataset>``.

The dataset part is the dataset's own name: the option chosen (``stdlib_docs``,
``gsm8k``, ...), or, for a local file or folder given as ``dataset.path``, that
file's stem or folder's name, so that runs on ``reviews.csv`` are called
``...-reviews`` rather than after the generic loader (``hf``, ``sft``). No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_name(cfg: Any, choices: dict[str, str]) -> str:
    """``cfg.name`` when given, else the default name of the run ``cfg`` describes."""
    from omegaconf import OmegaConf

    if cfg.get("name"):
        return str(cfg.name)
    path = OmegaConf.select(cfg, "dataset.path", default=None, throw_on_missing=False)
    return default_name(choices, path)


def default_name(choices: dict[str, str], dataset_path: Any = None) -> str:
    """``method-model-dataset`` from the group choices ('/' of nested options becomes '_')."""
    dataset = local_dataset_name(dataset_path) or str(choices.get("dataset", "dataset"))
    parts = [str(choices.get("method", "method")), str(choices.get("model", "model")), dataset]
    return "-".join(parts).replace("/", "_")


def local_dataset_name(path: Any) -> str | None:
    """The stem of a local data file, or the name of a local data folder; None for anything else (a hub id)."""
    if not path or not isinstance(path, (str, Path)):
        return None
    local = Path(str(path)).expanduser()
    try:
        if local.is_file():
            return local.name.split(".", 1)[0] or None  # reviews.csv, reviews.jsonl.gz -> reviews
        if local.is_dir():
            return local.resolve().name or None
    except OSError:  # an unreadable path names nothing
        return None
    return None

